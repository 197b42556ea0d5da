"""Power before spending: can this spec PASS at all, and how many seeds does the gate need to see its effect?

Before an idea runs, refinery (agent/intake.py) asks `check()`:
- whether the spec makes PASS impossible: fewer depth tasks than pass_min_tasks; a pre-registered expected_delta
  below pass_delta_points; or n v n seeds whose best possible one-sided exact Mann–Whitney p (complete
  separation, 1/C(2n, n)) times Holm's rank-u factor (m − u + 1) exceeds α — 3 v 3 gives 1/20 = 0.05 > 0.01, and
  4 v 4 1/70 = 0.014: only an extension could then PASS, at α/2;
- from the measured noise floor of its spec (experiments/noisefloor.py: σ, the control's seed-to-seed spread on
  the primary task) and expected_delta, the power of the gate's per-task clearing test at n seeds per arm, the
  seeds needed for power_target (80%), and the device time those seeds cost on this host.

The power is that of the statistical half of a task's clearing test (mean Δ ≥ pass_delta_points, every candidate
seed above every control seed, the Holm-corrected p reachable), with seeds drawn normal(Δ, σ) and normal(0, σ):
simulated (power_sims draws, fixed seed), its separation part cross-checked by the exact integral
P(min of n candidates > max of n controls) = ∫ n φ(y) Φ(y)^(n−1) (1 − Φ(y − Δ/σ))^n dy (scipy.integrate.quad). The
depth-gain and overthinking checks are assumed to hold: the figure is an upper bound on the whole rule's power.
Power is not monotone in the seeds: "every candidate seed above every control seed" gets harder as seeds are
added, so at σ = 4 a +12 effect has 67% power at 5 v 5 and 47% at 10 v 10 (tests/test_power.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import integrate, stats

from config import Settings

MAX_SEEDS = 40  # the most seeds per arm the search tries (complete separation only gets harder beyond)


def best_p(n: int, settings: Settings, extended: bool = False) -> float:
    """The smallest rank-u Holm p the gate can see at n v n seeds: complete separation, exact one-sided."""
    g = settings.gate
    m, u = len(settings.stages.tasks), g.pass_min_tasks
    return min(1.0, (m - u + 1) / math.comb(2 * n, n))


def impossible(settings: Settings, prereg: dict | None) -> list[str]:
    """Why this spec can never PASS (or not in its first round), each reason with its numbers; [] when it can."""
    g, st = settings.gate, settings.stages
    out = []
    if len(st.tasks) < g.pass_min_tasks:
        out.append(f"PASS needs {g.pass_min_tasks} depth tasks to clear and the spec has {len(st.tasks)} "
                   f"({', '.join(st.tasks)}): add depth tasks")
    n, e = st.ablation_seeds, g.extend_seeds
    p1, p2 = best_p(n, settings), best_p(n + e, settings)
    if p1 > g.alpha:
        tail = (f"only the extension to {n + e} v {n + e} (best p {p2:.2g} against α/2 = {g.alpha / 2:g}) could PASS"
                if p2 <= g.alpha / 2 else f"nor can {n + e} v {n + e} after the extension (best p {p2:.2g})")
        out.append(f"ablation_seeds = {n}: {n} v {n} seeds cannot reach p ≤ α = {g.alpha:g} (the best possible, every "
                   f"candidate seed above every control seed, is p = {p1:.3g}); {tail}; use ablation_seeds ≥ "
                   f"{min_seeds_for_p(settings)}")
    exp = (prereg or {}).get("expected_delta")
    if exp is not None and exp < g.pass_delta_points:
        out.append(f"expected_delta = {exp:g} points is below the +{g.pass_delta_points:g} a task needs to clear: "
                   "the pre-registered effect, if true, cannot PASS")
    return out


def min_seeds_for_p(settings: Settings) -> int:
    return next(n for n in range(2, MAX_SEEDS + 1) if best_p(n, settings) <= settings.gate.alpha)


def separation_exact(effect_sd: float, n: int) -> float:
    """P(every one of n candidate seeds beats every one of n control seeds), seeds normal with Δ/σ = effect_sd."""
    def f(y: float) -> float:  # y: the control maximum, density n φ Φ^(n−1); all candidates above it
        return n * stats.norm.pdf(y) * stats.norm.cdf(y) ** (n - 1) * stats.norm.sf(y - effect_sd) ** n
    val, _ = integrate.quad(f, -12.0, 12.0 + effect_sd, limit=200)
    return float(val)


def power(sigma: float, delta: float, n: int, settings: Settings, seed: int = 0) -> float:
    """P(a task clears the gate's statistical checks) at n v n seeds, seed noise normal with std sigma (points)."""
    g = settings.gate
    if best_p(n, settings) > g.alpha:
        return 0.0
    rng = np.random.default_rng(seed)
    sims = g.power_sims
    cand = rng.normal(delta, sigma, (sims, n))
    ctrl = rng.normal(0.0, sigma, (sims, n))
    ok = (cand.mean(1) - ctrl.mean(1) >= g.pass_delta_points) & (cand.min(1) > ctrl.max(1))
    return float(ok.mean())


def seeds_needed(sigma: float, delta: float, settings: Settings, upto: int = MAX_SEEDS) -> int | None:
    """The fewest seeds per arm with power ≥ power_target (None: not within upto)."""
    if delta <= settings.gate.pass_delta_points:  # the mean-Δ check alone caps the power at about 50%
        return None
    for n in range(min_seeds_for_p(settings), upto + 1):
        if power(sigma, delta, n, settings) >= settings.gate.power_target:
            return n
    return None


def device_s(settings: Settings, n: int, s_per_run: float) -> float:
    """Device seconds of an ablation at n seeds per arm: 2 arms × (depth tasks + the control task) × n runs."""
    return 2 * (len(settings.stages.tasks) + 1) * n * s_per_run


def check(settings: Settings, prereg: dict | None, floor: dict | None) -> dict[str, Any]:
    """The numbers for the comment before an idea runs. floor: the noise floor of its spec's primary task
    ({"sigma": points, "values": [...], "s_per_run": seconds, "fingerprint"}; None when unmeasured).
    ok is False when PASS is impossible or the allowed seeds (ablation_seeds + extend_seeds) fall short."""
    g, st = settings.gate, settings.stages
    problems = impossible(settings, prereg)
    primary = (prereg or {}).get("primary_task") or st.tasks[0]
    exp = (prereg or {}).get("expected_delta")
    allowed = st.ablation_seeds + g.extend_seeds
    out: dict[str, Any] = {"primary_task": primary, "expected_delta": exp, "alpha": g.alpha,
                           "power_target": g.power_target, "allowed_seeds": allowed, "seeds": st.ablation_seeds}
    if floor and floor.get("sigma") and exp is not None:
        sigma = float(floor["sigma"])
        need = seeds_needed(sigma, float(exp), settings)
        out.update(sigma=sigma, floor_runs=len(floor.get("values") or []), seeds_needed=need,
                   power_at_seeds=power(sigma, float(exp), st.ablation_seeds, settings),
                   power_at_allowed=power(sigma, float(exp), allowed, settings))
        if floor.get("s_per_run"):
            out["s_per_run"] = float(floor["s_per_run"])
            out["device_s_needed"] = device_s(settings, need, out["s_per_run"]) if need else None
            out["device_s_spec"] = device_s(settings, st.ablation_seeds, out["s_per_run"])
        if need is None or need > allowed:
            problems.append(f"at the measured noise floor (σ = {sigma:.2f} points on {primary}, "
                            f"{out['floor_runs']} control runs) an effect of +{exp:g} needs "
                            + (f"{need} seeds per arm" if need else f"more than {MAX_SEEDS} seeds per arm")
                            + f" for {g.power_target:.0%} power at α = {g.alpha:g}; the gate allows {allowed} "
                            f"({st.ablation_seeds} + an extension of {g.extend_seeds}); power at {allowed}: "
                            f"{out['power_at_allowed']:.0%}")
    else:
        out["unmeasured"] = ("no noise floor measured for this spec yet" if not (floor and floor.get("sigma"))
                             else "no expected_delta pre-registered")
    out["problems"], out["ok"] = problems, not problems
    out["text"] = comment(out, settings)
    return out


def comment(c: dict[str, Any], settings: Settings) -> str:
    """The one comment before anything runs: the numbers, and what a person can do."""
    lines = ["**Power before spending** — this spec cannot give the gate a fair chance, so nothing is queued yet:", ""]
    lines += [f"- {p}" for p in c["problems"]]
    if c.get("sigma") is not None:
        dev = c.get("device_s_needed")
        lines += ["", f"Primary task {c['primary_task']}: noise floor σ = {c['sigma']:.2f} points "
                      f"({c['floor_runs']} control runs); expected Δ = +{c['expected_delta']:g}; power at "
                      f"{c['seeds']} seeds {c['power_at_seeds']:.0%}, at {c['allowed_seeds']} "
                      f"{c['power_at_allowed']:.0%}; seeds needed for {c['power_target']:.0%}: "
                      f"{c['seeds_needed'] or 'out of reach'}"
                      + (f", about {dev / 60:.0f} device-minutes on this host" if dev else "") + "."]
    lines += ["", "Edit the issue body (the spec) to change this, or a writer reacts 👍 to this comment to run it "
                  "as it is."]
    return "\n".join(lines)
