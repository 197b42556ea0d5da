"""The gate: the written statistical rule that decides whether an idea lives (prose twin in CLAUDE.md).

Thresholds come from config.GateConfig; statistics from scipy.stats. Accuracies are in points (0–100),
read on each task's fixed held-out set at its hardest in-distribution level. "candidate" is the arm
under test (the spec's arch, normally refiner), "control" the reasoner run on the same seeds.

Ablation. A depth task is *uninformative* when both arms' mean accuracy lies within uninformative_margin (3) of
100 (ceiling) or of the trivial answer's accuracy (floor): no difference could be measured there, and it counts
neither for nor against the idea. An informative depth task *clears* when all of:
  1. mean Δ = candidate − control at r̄  ≥ pass_delta_points (10);
  2. every candidate seed beats every control seed (Mann–Whitney U = n₁n₂; exact one-sided p = 1/252 at 5 v 5);
  3. accuracy at r̄ ≥ depth_gain_points (10) above the same weights at r = 1 in ≥ 4 of 5 seeds (scaled for 10);
  4. mean accuracy at 2r̄ no more than overthink_points (3) below r̄.
The clauses, in this order (the first that applies decides):
  ERROR         the control task is broken (either arm below control_min_acc (95), or |Δ| above
                control_max_delta (3)), or no control / depth task ran: the instrument failed, never a verdict on the
                idea; the queue retries the run. Before anything else, after EXTEND too.
  INCONCLUSIVE  the primary task (prereg), or every depth task, is uninformative.
  PASS          ≥ pass_min_tasks (u = 2) clearing tasks whose Holm-corrected evidence holds: the u-th smallest
                one-sided p among them, times (m − u + 1) — Holm's factor at rank u over the m registered depth tasks,
                i.e. the Bonferroni partial-conjunction test "at least u of m effects are real" — is ≤ alpha (α/2
                after EXTEND). (Plain Holm over m = 3 would need p ≤ α/3 = 0.0033 for the first rejection, which
                5 v 5 seeds can never reach (1/252 = 0.0040); the rank-u form is the one 1/252 was written for.)
  FAIL          on every informative depth task the upper end of the 95% bootstrap CI of Δ is below fail_ci_upper
                (5), or on every informative depth task the candidate's mean r = 1 → r̄ gain is below
                fail_depth_gain (3).
  INCONCLUSIVE  fewer informative depth tasks than u: PASS was impossible at this difficulty.
  EXTEND        otherwise: extend_seeds more seeds, once, all seeds re-tested at α/2; after the extension this
                clause is FAIL instead (anything short of PASS that is not ERROR or INCONCLUSIVE).
An INCONCLUSIVE ablation is re-run along the task's difficulty ladder (experiments/ladder.py, config's
DIFFICULTY_LADDERS). Every verdict's evidence carries, per task, the per-seed values, means, std, Δ with its CI,
the tests and p-values and P(candidate > control).

Full. PASS when the candidate's mean validation loss is at most full_max_loss_gap (0.02) nats above the
control's (3 seeds) and its depth probe still rises with r: mean accuracy at r̄ at least full_depth_gain_points (3)
above r = 1, and 2r̄ no more than overthink_points (3) below r̄. Otherwise FAIL. Its evidence carries the per-seed
losses, the gap with its bootstrap CI and P(candidate's loss < control's).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from config import Settings

VERDICTS = ("PASS", "FAIL", "EXTEND", "INCONCLUSIVE", "ERROR")
# decide_ablation's clauses in the order it applies them (the first that applies decides); CLAUDE.md numbers them so
CLAUSES = ("ERROR", "INCONCLUSIVE", "PASS", "FAIL", "INCONCLUSIVE", "EXTEND")


@dataclass
class Verdict:
    verdict: str  # PASS | FAIL | EXTEND | INCONCLUSIVE | ERROR
    reason: str  # one line a person reads first
    evidence: dict[str, Any] = field(default_factory=dict)  # per task: per-seed values, stats, checks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def _welch(a: np.ndarray, b: np.ndarray, **kw):
    """Welch's t-test. One arm with every seed equal (all 100.0: common on a solved task) is a valid input;
    scipy warns about "catastrophic cancellation" in that arm's zero variance, which would only alarm a reader."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return stats.ttest_ind(a, b, equal_var=False, **kw)


def compare(cand: list[float], ctrl: list[float], settings: Settings, seed: int = 0) -> dict[str, Any]:
    """Two arms' per-seed values: means, std, Δ with its bootstrap CI, exact one-sided Mann–Whitney,
    Welch's t (secondary), P(candidate > control)."""
    g = settings.gate
    a, b = np.asarray(cand, float), np.asarray(ctrl, float)
    n1, n2 = len(a), len(b)
    delta = float(a.mean() - b.mean())
    ties = len(np.unique(np.concatenate([a, b]))) < n1 + n2
    method = stats.PermutationMethod(n_resamples=np.inf if math.comb(n1 + n2, n1) <= 20_000 else 9_999,
                                     rng=seed) if ties else "exact"
    mw = stats.mannwhitneyu(a, b, alternative="greater", method=method)
    if np.ptp(np.concatenate([a - a.mean(), b - b.mean()])) == 0:  # no spread: the CI is the point
        ci = (delta, delta)
    else:
        bs = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
                             confidence_level=g.ci_level, n_resamples=g.bootstrap_resamples, method="percentile",
                             vectorized=True, rng=seed)
        ci = (float(bs.confidence_interval.low), float(bs.confidence_interval.high))
    spread = min(n1, n2) > 1 and (a.std() > 0 or b.std() > 0)
    welch = _welch(a, b, alternative="greater") if spread else None
    return {
        "candidate": [float(x) for x in a], "control": [float(x) for x in b],
        "mean_candidate": float(a.mean()), "mean_control": float(b.mean()),
        "std_candidate": float(a.std(ddof=1)) if n1 > 1 else 0.0,
        "std_control": float(b.std(ddof=1)) if n2 > 1 else 0.0,
        "delta": delta, "delta_ci": [ci[0], ci[1]], "ci_level": g.ci_level,
        "mannwhitney_u": float(mw.statistic), "mannwhitney_p": float(mw.pvalue),
        "mannwhitney_method": "exact" if method == "exact" else "exact permutation (ties)",
        "welch_t": _f(welch.statistic) if welch else None, "welch_p": _f(welch.pvalue) if welch else None,
        "p_superiority": float(mw.statistic) / (n1 * n2),  # P(candidate > control), ties count 1/2
        "separated": float(mw.statistic) == n1 * n2,  # every candidate seed beats every control seed
    }


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    order = sorted(pvalues, key=pvalues.get)
    m, out, running = len(order), {}, 0.0
    for i, k in enumerate(order):
        running = max(running, (m - i) * pvalues[k])
        out[k] = min(1.0, running)
    return out


def _arm(task_ev: dict, arm: str, key: str) -> list[float]:
    return [float(x) for x in task_ev[arm][key]]


def informative(c: dict[str, Any], floor: float | None, g) -> str:
    """'yes', or why a depth task measured nothing: 'ceiling' (both arms' means within uninformative_margin of
    100) or 'floor' (both within it of the trivial answer's accuracy, in points)."""
    lo, hi = min(c["mean_candidate"], c["mean_control"]), max(c["mean_candidate"], c["mean_control"])
    if lo >= 100.0 - g.uninformative_margin:
        return "ceiling"
    if floor is not None and hi <= floor + g.uninformative_margin:
        return "floor"
    return "yes"


def _depth_task(ev: dict, settings: Settings) -> dict[str, Any]:
    g = settings.gate
    c = compare(_arm(ev, "candidate", "rbar"), _arm(ev, "control", "rbar"), settings)
    rbar, r1, r2 = (np.array(_arm(ev, "candidate", k)) for k in ("rbar", "r1", "r2bar"))
    gain = rbar - r1
    need = math.ceil(g.depth_gain_min_seeds * len(gain) / settings.stages.ablation_seeds)  # 4 of 5 -> 8 of 10
    floor = ev.get("floor")
    c.update({
        "candidate_r1": r1.tolist(), "candidate_r2bar": r2.tolist(),
        "control_r1": _arm(ev, "control", "r1"), "control_r2bar": _arm(ev, "control", "r2bar"),
        "depth_gain": gain.tolist(), "depth_gain_mean": float(gain.mean()),
        "depth_gain_seeds": int((gain >= g.depth_gain_points).sum()), "depth_gain_seeds_needed": need,
        "overthink": float(r2.mean() - rbar.mean()), "floor": None if floor is None else float(floor),
    })
    c["informative"] = informative(c, c["floor"], g)
    c["checks"] = {
        "delta": c["delta"] >= g.pass_delta_points,
        "separated": c["separated"],
        "depth_gain": c["depth_gain_seeds"] >= need,
        "overthink": c["overthink"] >= -g.overthink_points,
    }
    c["clears"] = c["informative"] == "yes" and all(c["checks"].values())
    return c


def decide_ablation(evidence: dict[str, Any], settings: Settings) -> Verdict:
    """evidence = {"tasks": {name: {"role": "depth"|"control", "floor": points (optional), "candidate": {"r1": [...],
    "rbar": [...], "r2bar": [...]}, "control": {... same ...}}}, "extended": bool, "primary": task (optional)};
    values in points, one per seed, seeds in the same order in both arms. The clauses in order (CLAUDE.md, "The
    gate"): ERROR, INCONCLUSIVE, PASS, FAIL, INCONCLUSIVE (too few informative tasks), EXTEND / FAIL after it."""
    g = settings.gate
    extended = bool(evidence.get("extended"))
    alpha = g.alpha / 2 if extended else g.alpha
    tasks = evidence["tasks"]
    depth = [t for t, ev in tasks.items() if ev.get("role", "depth") == "depth"]
    controls = [t for t, ev in tasks.items() if ev.get("role") == "control"]
    primary = evidence.get("primary")
    out: dict[str, Any] = {"alpha": alpha, "extended": extended, "tasks": {}, "thresholds": asdict(g),
                           "primary": primary}
    if not depth:
        return Verdict("ERROR", "no depth task in the evidence", {**out, "input": evidence})
    # every statistic first, so that every verdict (ERROR and INCONCLUSIVE too) carries them
    for t in depth:
        out["tasks"][t] = _depth_task(tasks[t], settings)
    out["holm_p"] = holm({t: out["tasks"][t]["mannwhitney_p"] for t in depth})
    for t in depth:
        out["tasks"][t]["holm_p"] = out["holm_p"][t]
    inf = [t for t in depth if out["tasks"][t]["informative"] == "yes"]
    uninf = {t: out["tasks"][t]["informative"] for t in depth if t not in inf}
    clearing = sorted((t for t in inf if out["tasks"][t]["clears"]), key=lambda t: out["tasks"][t]["mannwhitney_p"])
    # Holm's rank-u factor over every registered depth task (uninformative ones included: the conservative family)
    u, m = g.pass_min_tasks, len(depth)
    p_u = (m - u + 1) * out["tasks"][clearing[u - 1]]["mannwhitney_p"] if len(clearing) >= u else 1.0
    out.update({"clearing_tasks": clearing, "rank_u_p": min(1.0, p_u), "u": u, "m": m,
                "informative_tasks": inf, "uninformative": uninf})
    ctrl_ok, ctrl_why = True, []
    for t in controls:
        c = compare(_arm(tasks[t], "candidate", "rbar"), _arm(tasks[t], "control", "rbar"), settings)
        out["tasks"][t] = c
        if abs(c["delta"]) > g.control_max_delta:
            ctrl_ok = False
            ctrl_why.append(f"{t}: |Δ| = {abs(c['delta']):.1f} > {g.control_max_delta:g}")
        low = min(c["mean_candidate"], c["mean_control"])
        if low < g.control_min_acc:
            ctrl_ok = False
            ctrl_why.append(f"{t}: an arm reaches only {low:.1f} < {g.control_min_acc:g}")
    if not controls:
        ctrl_ok, ctrl_why = False, ["no control task was run"]
    out["control_ok"] = ctrl_ok
    summary = "; ".join(f"{t} Δ {out['tasks'][t]['delta']:+.1f} [{out['tasks'][t]['delta_ci'][0]:+.1f}, "
                        f"{out['tasks'][t]['delta_ci'][1]:+.1f}], P(cand > ctrl) {out['tasks'][t]['p_superiority']:.2f}"
                        + ("" if t in inf else f" (uninformative: {uninf[t]})") for t in depth)
    # 1. ERROR: a broken instrument says nothing about the idea, whatever the depth tasks show (extended or not)
    if not ctrl_ok:
        return Verdict("ERROR", "control task broken (" + "; ".join(ctrl_why) + "): the instrument failed, "
                       f"not the idea; the run is retried; {summary}", out)
    # 2. INCONCLUSIVE: the primary task, or every depth task, measured nothing
    seen = "; ".join(_uninf_text(t, out["tasks"][t], g) for t in uninf)
    if (primary in uninf) or not inf:
        which = f"the primary task {primary}" if primary in uninf else "every depth task"
        return Verdict("INCONCLUSIVE", f"{which} could not measure a difference ({seen}): neither for nor against "
                       f"the idea; re-run at another difficulty; {summary}", out)
    # 3. PASS
    if len(clearing) >= u and p_u <= alpha:
        return Verdict("PASS", f"{len(clearing)} depth tasks clear ({', '.join(clearing)}), rank-{u} Holm p = "
                       f"{p_u:.4f} ≤ {alpha:g}, control healthy; {summary}", out)
    # 4. FAIL, on the informative depth tasks only
    ci_low = all(out["tasks"][t]["delta_ci"][1] < g.fail_ci_upper for t in inf)
    no_depth = all(out["tasks"][t]["depth_gain_mean"] < g.fail_depth_gain for t in inf)
    every = "every informative depth task" if uninf else "every depth task"
    if ci_low or no_depth:
        why = (f"the {g.ci_level:.0%} CI of Δ lies below +{g.fail_ci_upper:g} on {every}" if ci_low
               else f"r = 1 → r̄ gains < {g.fail_depth_gain:g} points on {every} (depth does no work)")
        return Verdict("FAIL", f"{why}; {summary}", out)
    # 5. INCONCLUSIVE: too few informative tasks left for PASS to be possible
    if len(inf) < u:
        return Verdict("INCONCLUSIVE", f"only {len(inf)} informative depth task(s), PASS needs {u} ({seen}); "
                       f"re-run at another difficulty; {summary}", out)
    # 6. EXTEND once; after it, anything short of PASS (that is not ERROR or INCONCLUSIVE) is FAIL
    if extended:
        return Verdict("FAIL", f"after {g.extend_seeds} extra seeds, fewer than {u} depth tasks clear at α/2 = "
                       f"{alpha:g} (rank-{u} p = {min(1.0, p_u):.4f}); {summary}", out)
    return Verdict("EXTEND", f"undecided: add {g.extend_seeds} seeds once and re-test at α/2; {summary}", out)


def _uninf_text(t: str, c: dict, g) -> str:
    where = "100" if c["informative"] == "ceiling" else f"the trivial answer's {c['floor']:.1f}"
    return (f"{t}: both arms within {g.uninformative_margin:g} points of {where} (candidate {c['mean_candidate']:.1f}, "
            f"control {c['mean_control']:.1f})")


def decide_full(evidence: dict[str, Any], settings: Settings) -> Verdict:
    """evidence = {"val_loss": {"candidate": [per seed], "control": [per seed]},
    "depth_curve": {"r": [1, 2, …], "candidate": [[acc per r] per seed]}, "r_bar": int}.
    PASS: mean loss gap ≤ full_max_loss_gap and the probe's depth curve still rising: mean accuracy at r̄ at least
    full_depth_gain_points above r = 1, and 2r̄ no more than overthink_points below r̄. The evidence carries per-seed
    losses, the gap with its bootstrap CI and P(candidate's loss < control's)."""
    g = settings.gate
    a = np.asarray(evidence["val_loss"]["candidate"], float)
    b = np.asarray(evidence["val_loss"]["control"], float)
    gap = float(a.mean() - b.mean())
    # lower loss is better: compare the negated losses, so "candidate > control" means a lower candidate loss
    c = compare((-a).tolist(), (-b).tolist(), settings)
    out: dict[str, Any] = {"val_loss_candidate": a.tolist(), "val_loss_control": b.tolist(),
                           "mean_candidate": float(a.mean()), "mean_control": float(b.mean()),
                           "std_candidate": c["std_candidate"], "std_control": c["std_control"], "loss_gap": gap,
                           "loss_gap_ci": [-c["delta_ci"][1], -c["delta_ci"][0]], "ci_level": g.ci_level,
                           "p_superiority": c["p_superiority"], "mannwhitney_p_better": c["mannwhitney_p"]}
    if len(a) > 1 and len(b) > 1 and (a.std() > 0 or b.std() > 0):
        w = _welch(a, b)
        out.update(welch_t=_f(w.statistic), welch_p=_f(w.pvalue))
        out["mannwhitney_p_worse"] = float(stats.mannwhitneyu(a, b, alternative="greater").pvalue)
    curve = evidence.get("depth_curve") or {}
    rs, rows = curve.get("r") or [], curve.get("candidate") or []
    rising, why_curve = False, "no depth curve"
    if rs and rows and all(len(row) for row in rows):
        arr = np.asarray(rows, float)
        mean_curve = arr.mean(axis=0)
        r_bar = int(evidence.get("r_bar", rs[len(rs) // 2]))
        at = {r: float(v) for r, v in zip(rs, mean_curve)}
        top = at.get(r_bar, float(mean_curve.max()))
        deepest = at.get(2 * r_bar, float(mean_curve[-1]))
        i_bar = rs.index(r_bar) if r_bar in rs else int(mean_curve.argmax())
        rising = top - at[rs[0]] >= g.full_depth_gain_points and deepest >= top - g.overthink_points
        why_curve = (f"depth curve r=1 {at[rs[0]]:.1f} → r̄ {top:.1f} → 2r̄ {deepest:.1f} (rising needs r̄ ≥ r=1 + "
                     f"{g.full_depth_gain_points:g}, 2r̄ ≥ r̄ − {g.overthink_points:g})")
        out.update(depth_curve_mean=mean_curve.tolist(), depth_curve_r=list(rs), depth_rising=rising,
                   depth_gain_per_seed=(arr[:, i_bar] - arr[:, 0]).tolist(), depth_gain_mean=top - at[rs[0]])
    ok_loss = gap <= g.full_max_loss_gap
    out["checks"] = {"loss_gap": ok_loss, "depth_rising": rising}
    lo, hi = out["loss_gap_ci"]
    text = (f"val loss {a.mean():.4f} vs control {b.mean():.4f} (gap {gap:+.4f} nats [{lo:+.4f}, {hi:+.4f}], limit "
            f"{g.full_max_loss_gap:g}; P(candidate lower) {c['p_superiority']:.2f}); ")
    if ok_loss and rising:
        return Verdict("PASS", text + why_curve, out)
    return Verdict("FAIL", text + why_curve + ("" if rising else " (not rising)"), out)
