"""refinery's single source of truth: every constant, typed, validated, overridable.

One commented list, grouped under ruler headings. Each field carries its unit, its allowed range and
why it has the value it has. Nothing else defines a constant of its own; modules read them from here.

Layers, later wins:  defaults  <  hardware profile  <  size preset (model dims)
                     <  environment (REFINERY_<FIELD>, MODEL_ARCH)  <  REFINERY_ENV_FILE's lines
                     <  spec (TOML)

    refinery config [--json]     # the effective configuration, each value's range and source

Importing this module has no side effects: no torch, no network, no files.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent  # the repository; runs/ and docs/ hang off it
DB_URL_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgres")  # what jobqueue/db.py speaks
ENV_PREFIX = "REFINERY_"
# owner/name as GitHub allows them: an owner of letters, digits and inner hyphens; a name of letters, digits,
# '.', '_' and '-' (not "." or ".."). Anything else would only surface later as a 404 on every poll.
GITHUB_REPO_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/(?!\.\.?$)[A-Za-z0-9._-]{1,100}")


class RefineryError(Exception):
    """The one base of refinery's errors. Each subclass's docstring names the problem and the fix;
    the CLI prints the chain of causes on one line each, the traceback only with -v."""


class ConfigError(RefineryError, ValueError):
    """A setting is unknown, of the wrong type or out of range.

    Fix: change the named field (environment variable, profile or spec key) to a
    value inside the range given in the message; `refinery config` lists them all.
    """

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(p.text() for p in problems))


@dataclass(frozen=True)
class Problem:
    key: str  # the field name as the user wrote it
    message: str  # what was wrong
    suggestion: str = ""  # what to write instead
    source: str = ""  # where it came from (env:REFINERY_LR, spec line 4, ...)

    def text(self) -> str:
        where = f" ({self.source})" if self.source else ""
        hint = f" — {self.suggestion}" if self.suggestion else ""
        return f"{self.key}: {self.message}{where}{hint}"


def F(default: Any, help: str, lo: float | None = None, hi: float | None = None,
      choices: tuple | None = None, open_lo: bool = False):
    """A field with its documentation and its allowed range (closed unless open_lo)."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "open_lo": open_lo}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults (frozen config)")
    return field(default=default, metadata=meta)


def _cpu_workers_default() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelConfig:
    arch: str = F("refiner", "architecture: refiner (gated, timed loop), reasoner (plain loop, the control), "
                  "stack (distinct blocks, depth prelude + r_mean: matched FLOPs)",
                  choices=("refiner", "reasoner", "stack"))
    preset: str = F("tiny", "size dial; derives d_model, n_heads, d_mlp (SIZE_PRESETS)",
                    choices=("tiny", "small", "base"))
    d_model: int = F(0, "residual width; 0 = from the preset", 0, 8192)
    n_heads: int = F(0, "attention heads; 0 = from the preset", 0, 128)
    d_mlp: int = F(0, "SwiGLU hidden width; 0 = from the preset", 0, 32768)
    n_prelude: int = F(1, "causal blocks before the loop", 0, 64)
    prelude_attention: bool = F(True, "prelude blocks attend (False: MLP-only, so depth must come from the loop)")
    vocab_size: int = F(50304, "r50k_base (50257) padded to a multiple of 128 for tensor cores", 2, 1 << 20)
    seq_len: int = F(64, "tokens per example (toy tasks) or per window (language modelling)", 4, 32768)
    r_sampler: str = F("uniform", "training depth distribution: uniform on [r_min, r_max], Huginn's "
                       "poisson_lognormal with mean r_mean, or fixed at r_mean",
                       choices=("uniform", "poisson_lognormal", "fixed"))
    r_min: int = F(1, "fewest loop passes in training", 1, 256)
    r_max: int = F(4, "most loop passes in training (uniform); cap for poisson_lognormal", 1, 256)
    r_mean: int = F(4, "r̄: mean training depth; the stack arm's depth; the primary read-out depth", 1, 256)
    r_eval: int = F(0, "passes at inference; 0 = r_mean", 0, 256)
    r_sigma: float = F(0.5, "lognormal sigma of the poisson_lognormal sampler (Huginn uses 0.5)", 0.0, 5.0)
    r_hold_frac: float = F(0.0, "uniform sampler: r ≤ r̄ for this first fraction of training (hop, then hold)", 0.0, 1.0)
    backprop_window: int = F(0, "gradients flow through the last N passes only; 0 = all", 0, 256)
    gate: str = F("channel", "refiner gate granularity: sigmoid per channel or one per token",
                  choices=("channel", "token"))
    gate_init_bias: float = F(-1.0, "gate bias at init: sigmoid(-1) = 0.27, so early passes mostly keep "
                              "the state (stable) yet still learn (gate far from 0)", -10.0, 10.0)
    r_limit: int = F(64, "largest r the time signal is defined for", 1, 4096)
    logit_softcap: float = F(15.0, "tanh soft cap on logits (fp16 safety; modded-nanogpt uses 15); 0 = off",
                             0.0, 1000.0)
    rope_base: float = F(10000.0, "RoPE frequency base", 1.0, 1e7)
    init_std: float = F(0.02, "weight init std; 0.02 also keeps a tied 50k head out of denormals on CPU",
                        1e-5, 1.0, open_lo=True)
    loss_chunk_tokens: int = F(4096, "tokens per chunk of the language-modelling loss; each chunk's logits "
                               "are recomputed in backward, so at most chunk x vocab logits live at once", 64, 10**7)


# name: (d_model, n_heads, d_mlp). tiny trains on 2 CPU cores in seconds; small fits the
# RTX 2060 with room for batch; base is the largest that fits its 6 GB for training.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "n_heads": 2, "d_mlp": 256},
    "small": {"d_model": 384, "n_heads": 6, "d_mlp": 1536},
    "base": {"d_model": 768, "n_heads": 12, "d_mlp": 3072},
}


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    lr: float = F(3e-3, "peak AdamW learning rate", 0.0, 1.0, open_lo=True)
    weight_decay: float = F(0.1, "AdamW decoupled weight decay on matrices", 0.0, 10.0)
    beta1: float = F(0.9, "AdamW beta1", 0.0, 1.0)
    beta2: float = F(0.95, "AdamW beta2", 0.0, 1.0)
    batch_size: int = F(32, "examples (or windows) per step", 1, 65536)
    warmup_steps: int = F(50, "linear LR warm-up", 0, 10**7)
    grad_clip: float = F(1.0, "global grad-norm clip; 0 = off", 0.0, 1e6)
    lr_final_frac: float = F(0.1, "cosine decay ends at this fraction of the peak LR", 0.0, 1.0)
    seed: int = F(0, "base seed; a seed sets init, the data stream and the depth draws", 0, 2**31 - 1)
    dtype: str = F("auto", "compute dtype: auto (float16 on CUDA, float32 on CPU), or force one; float16 on a CPU "
                   "runs the CUDA path's autocast + GradScaler code, slowly (tests and CI, not speed)",
                   choices=("auto", "float32", "float16", "bfloat16"))
    grad_scale_init: float = F(65536.0, "float16: the GradScaler's first loss scale (torch's default 2^16); each "
                               "overflow halves it and skips that step while it calibrates", 1.0, 2.0 ** 24)
    grad_scale_settle_steps: int = F(10, "float16: the loss scale counts as settled after this many clean steps in "
                                      "a row; skips before that are its calibration (reported apart)", 1, 10**6)
    grad_scale_growth_interval: int = F(2000, "float16: clean steps before the GradScaler doubles its scale",
                                        1, 10**7)
    allow_math_sdpa: bool = F(False, "allow the slow math attention fallback on CUDA (else an error)")
    device: str = F("auto", "auto (cuda if present), cpu or cuda[:N]")


# --------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class StageConfig:
    tasks: tuple = F(("khop", "s5", "listops"), "depth tasks of the ablation (experiments/tasks/)")
    control_task: str = F("copy", "task where constant depth suffices: an effect there means the "
                          "instrument is broken (copy = one-hop lookup; summod needs depth at the tiny preset)")
    khop_n: int = F(8, "k-hop: symbols in the permutation", 4, 16)
    khop_k: int = F(4, "k-hop: hops at the hardest in-distribution level", 1, 8)
    s5_len: int = F(8, "S5 word problem: generators composed", 1, 16)
    listops_depth: int = F(2, "ListOps: nesting depth", 1, 4)
    summod_len: int = F(8, "sum-mod-p control: operands", 1, 64)
    summod_p: int = F(10, "sum-mod-p control: modulus", 2, 97)
    test_examples: int = F(2000, "held-out test set size per task (own seed)", 100, 10**6)
    level_by_depth: bool = F(True, "toy training: a batch drawn at depth r mixes levels 1..ceil(level·r/r̄), all "
                             "at r ≥ r̄ (r ≥ k for k-hop), so shallow draws are not spent on problems they cannot solve")
    eval_r_max: int = F(0, "toy evaluation: the depth curve reads out after passes 1..this; 0 = 2·r_mean", 0, 256)
    stage_threads: int = F(0, "torch CPU threads in a stage; 0 = torch's default (all cores)", 0, 1024)
    stage_jobs: int = F(0, "toy runs trained at once on a CPU (ablation, calibration), a process with one torch "
                        "thread each; 0 = the cores, 1 = one after another in the stage's process (GPU: always 1)",
                        0, 1024)
    smoke_steps: int = F(150, "smoke: steps checked for NaN, scale and gate health", 1, 10**6)
    smoke_overfit_steps: int = F(150, "smoke: steps to overfit one batch", 1, 10**6)
    smoke_overfit_loss: float = F(0.5, "smoke: the overfit batch must reach this loss (nats)", 0.0, 100.0)
    smoke_max_skip_frac: float = F(0.01, "smoke: skipped steps allowed after the GradScaler settled "
                                   "(grad_scale_settle_steps clean steps in a row), as a fraction of all steps",
                                   0.0, 1.0)
    max_calibration_skips: int = F(8, "skips allowed while the loss scale calibrates, before it settled (2^16 "
                                   "halved 8 times is 2^8, smoke_min_grad_scale); past it smoke FAILs, an ablation "
                                   "or calibration run is an ERROR", 0, 10**6)
    smoke_min_grad_scale: float = F(256.0, "smoke: the GradScaler's scale at the end must be at least this", 0.0,
                                    2.0 ** 24)
    skip_error_frac: float = F(0.05, "ablation/calibration: a run whose settled skipped steps exceed this fraction "
                               "of its steps is an ERROR of the run (retried), not evidence about the idea", 0.0, 1.0)
    eval_chunk: int = F(250, "toy evaluation: test examples per forward of the depth curve (its logits are "
                        "[eval_r_max, chunk, vocab] float32: on the r50k vocabulary 250 x 8 passes is 0.4 GB)",
                        1, 10**6)
    ablation_steps: int = F(1500, "ablation: steps per run (per arm, per seed, per task)", 1, 10**8)
    ablation_seeds: int = F(5, "ablation: seeds per arm, shared across arms", 2, 100)
    ablation_stack_arm: bool = F(False, "ablation: also run the matched-FLOPs stack arm")
    full_steps: int = F(2000, "full: language-modelling steps per run", 1, 10**9)
    full_seeds: int = F(3, "full: seeds per arm", 1, 100)
    ckpt_every: int = F(500, "full: checkpoint every N steps (and on SIGTERM)", 1, 10**9)
    eval_every: int = F(250, "evaluate every N steps", 1, 10**9)
    eval_batches: int = F(20, "validation batches per evaluation (full stage)", 1, 10**6)
    full_probe_task: str = F("khop", "full: the toy task of the depth probe after language modelling",
                             choices=("khop", "s5", "listops", "summod", "copy"))
    full_probe_steps: int = F(300, "full: fine-tuning steps of the depth probe on that task (r50k ids)", 0, 10**7)
    corpus_dir: str = F("runs/corpus", "full: the tokenized corpus (relative paths are under the repo)")


# --------------------------------------------------------------------------- gate
# The decision rule itself is code in experiments/gate.py and prose in CLAUDE.md; these
# are its thresholds, in accuracy points (0-100) unless said otherwise.
@dataclass(frozen=True)
class GateConfig:
    pass_delta_points: float = F(10.0, "PASS: mean Δ(refiner − control) on a depth task", 0.0, 100.0)
    pass_min_tasks: int = F(2, "PASS: depth tasks that must clear pass_delta_points", 1, 16)
    alpha: float = F(0.01, "family-wise one-sided alpha (Holm across tasks)", 0.0, 0.5, open_lo=True)
    depth_gain_points: float = F(10.0, "PASS: accuracy at r̄ over r = 1, same weights", 0.0, 100.0)
    depth_gain_min_seeds: int = F(4, "PASS: seeds (of ablation_seeds) showing that depth gain", 1, 100)
    overthink_points: float = F(3.0, "PASS: accuracy at 2r̄ may fall at most this far below r̄", 0.0, 100.0)
    control_max_delta: float = F(3.0, "PASS: |Δ| on the control task", 0.0, 100.0)
    control_min_acc: float = F(95.0, "PASS: both arms' accuracy on the control task", 0.0, 100.0)
    fail_ci_upper: float = F(5.0, "FAIL: the 95% CI of Δ lies below this on every depth task", -100.0, 100.0)
    fail_depth_gain: float = F(3.0, "FAIL: r = 1 → r̄ gains less than this", -100.0, 100.0)
    extend_seeds: int = F(5, "EXTEND: extra seeds, once, re-tested at alpha/2", 1, 100)
    ci_level: float = F(0.95, "bootstrap confidence level", 0.5, 0.999)
    bootstrap_resamples: int = F(10000, "bootstrap resamples", 100, 10**7)
    full_max_loss_gap: float = F(0.02, "full: val loss may be at most this many nats worse than control",
                                 0.0, 10.0)
    full_depth_gain_points: float = F(3.0, "full: the depth probe 'still rises with r' when its mean accuracy at r̄ "
                                      "exceeds r = 1 by at least this (the FAIL rule's 'depth does work' bar), and "
                                      "2r̄ stays within overthink_points of r̄", 0.0, 100.0)
    uninformative_margin: float = F(3.0, "a depth task where both arms' mean accuracy at r̄ lies within this of 100 "
                                    "(ceiling) or of the trivial answer's accuracy (floor) measured nothing: it counts "
                                    "neither for nor against the idea (no +10 effect fits in 3 points)", 0.0, 50.0)
    inconclusive_reruns: int = F(1, "INCONCLUSIVE: ablation re-runs one level along the task's difficulty ladder "
                                 "(DIFFICULTY_LADDERS) before the idea waits for a person's spec", 0, 8)
    power_target: float = F(0.8, "power before spending: the chance the gate must have to PASS the pre-registered "
                            "expected_delta at the measured noise floor", 0.5, 0.999)
    power_sims: int = F(20000, "power before spending: simulated ablations per seed count (normal seed noise)",
                        100, 10**7)


# Each depth task's difficulty ladder, easiest first: a level is the spec fields it sets. An ablation whose task
# came out uninformative (both arms at the ceiling, or at the trivial answer's accuracy) is re-run one level up
# (ceiling) or down (floor); ablation_steps is a minimum at that level (a re-run never trains fewer steps). A
# spec value between two levels counts as the level below it. experiments/ladder.py reads this.
DIFFICULTY_LADDERS: dict[str, tuple[dict[str, int], ...]] = {
    "khop": ({"khop_k": 1}, {"khop_k": 2}, {"khop_k": 3, "ablation_steps": 2000},
             {"khop_k": 4, "ablation_steps": 3000}, {"khop_k": 6, "ablation_steps": 4000},
             {"khop_k": 8, "ablation_steps": 5000}),
    "s5": ({"s5_len": 4}, {"s5_len": 6}, {"s5_len": 8, "ablation_steps": 2000}, {"s5_len": 10, "ablation_steps": 3000},
           {"s5_len": 12, "ablation_steps": 4000}, {"s5_len": 16, "ablation_steps": 5000}),
    "listops": ({"listops_depth": 1}, {"listops_depth": 2}, {"listops_depth": 3, "ablation_steps": 2500},
                {"listops_depth": 4, "ablation_steps": 4000}),
}


# The calibration's graded positive controls (experiments/calibration.py): the effect, in points, injected into the
# control arm of an ablation whose arms are otherwise identical — on every depth task, each control run's answers
# are replaced by the trivial answer at the rate that lowers its accuracy at r̄ by that many points (seeded
# binomial draws; never below the trivial answer's accuracy). "aa" is the A/A null: nothing injected. Every grade
# of a unit index reuses that index's runs (candidate and control, disjoint seeds), so a grade costs no training.
CALIBRATION_GRADES: dict[str, float] = {"aa": 0.0, "e5": 5.0, "e10": 10.0, "e15": 15.0, "e20": 20.0}
CALIBRATION_SEED_BASE = 2_000_000  # calibration seeds: never an idea's (0 …), a replication's (10,000 …) or noise's


# --------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class HardwareConfig:
    profile: str = F("cpu-tiny", "hardware profile (HARDWARE_PROFILES)", choices=("cpu-tiny", "cpu-fp16", "rtx2060"))
    gpu_mem_budget: int = F(5_400_000_000, "bytes a training run may plan for (6 GB card minus a margin "
                            "for the CUDA context and fragmentation)", 1, 10**13)
    cpu_mem_budget: int = F(8_000_000_000, "bytes a CPU training run may plan for", 1, 10**13)
    peak_flops_fp16: float = F(25.8e12, "MFU denominator: RTX 2060 tensor fp16 with fp32 accumulate", 1.0, 1e18)
    min_free_disk_gb: float = F(2.0, "a stage refuses to start below this free space on runs/", 0.0, 1e6)


# Profiles list only what differs from the defaults.
HARDWARE_PROFILES: dict[str, dict[str, Any]] = {
    "cpu-tiny": {"preset": "tiny", "dtype": "float32"},
    # the CI profile of the float16 path: the CUDA code (autocast float16 + GradScaler) on a CPU, slowly
    "cpu-fp16": {"preset": "tiny", "dtype": "float16", "device": "cpu"},
    "rtx2060": {"preset": "small", "dtype": "float16", "gpu_mem_budget": 5_400_000_000,
                "peak_flops_fp16": 25.8e12},
}


# --------------------------------------------------------------------------- queue
@dataclass(frozen=True)
class QueueConfig:
    db_url: str = F("sqlite:///runs/queue.db", "queue database (relative sqlite paths are under the repo)")
    host_name: str = F("", "this host's name in the queue; '' = the machine's hostname")
    gpu_devices: str = F("0", "comma-separated GPU ids this host's gpu lane owns")
    cpu_workers: int = F(0, "concurrent cpu-lane jobs; 0 = cores − 1, at least 1", 0, 1024)
    lease_s: float = F(60.0, "a claim's lease; heartbeats renew it", 1.0, 86400.0)
    heartbeat_s: float = F(10.0, "heartbeat period (well under lease_s)", 0.05, 3600.0)
    max_attempts: int = F(3, "attempts before a job fails for good", 1, 100)
    retry_backoff_s: float = F(30.0, "first retry delay; doubles per attempt", 0.0, 86400.0)
    cancel_grace_s: float = F(30.0, "SIGTERM → SIGKILL grace for a cancelled or timed-out child", 0.0, 3600.0)
    wall_smoke_s: float = F(900.0, "wall-time limit of a smoke job", 1.0, 10**7)
    wall_ablation_s: float = F(4 * 3600.0, "wall-time limit of an ablation job", 1.0, 10**7)
    wall_full_s: float = F(72 * 3600.0, "wall-time limit of a full job", 1.0, 10**7)
    wall_task_s: float = F(3600.0, "wall-time limit of a generic task job", 1.0, 10**7)
    clock_check_s: float = F(60.0, "PostgreSQL: how often this host measures its clock against the database's "
                             "(leases and recovery are judged by the database's clock)", 1.0, 86400.0)
    agent_lease_s: float = F(1800.0, "an agent-lane claim's lease (a coding agent heartbeats)", 1.0, 10**7)
    sqlite_synchronous: str = F("NORMAL", "SQLite synchronous level in WAL mode: NORMAL survives kill -9, "
                                "may lose the last commits on power loss", choices=("NORMAL", "FULL"))
    sqlite_busy_timeout_ms: int = F(30000, "SQLite busy timeout", 0, 10**7)
    sqlite_checkpoint_pages: int = F(10000, "WAL pages between checkpoints; workers also checkpoint every heartbeat_s",
                                     0, 10**7)
    idle_poll_s: float = F(0.002, "an idle SQLite worker's re-check period (PostgreSQL uses LISTEN/NOTIFY)",
                           0.0005, 60.0)
    runs_dir: str = F("runs", "run directories, runs/locks/ and runs/agent/ (relative paths are under the repo)")
    max_resumes: int = F(20, "exit-75 resumes (stopped warm, checkpoint written) a job may take before they count "
                         "as failed attempts: a job that always exits 75 must not loop forever", 0, 10**6)
    resume_backoff_s: float = F(5.0, "delay before a job that exited 75 on its own is claimed again "
                                "(a worker's warm stop requeues at once)", 0.0, 86400.0)


# --------------------------------------------------------------------------- daemon
@dataclass(frozen=True)
class DaemonConfig:
    tracker: str = F("local", "issue tracker: local (in the queue database) or github", choices=("local", "github"))
    github_repo: str = F("", "owner/name watched when tracker = github")
    github_api_url: str = F("https://api.github.com", "REST base URL (GitHub Enterprise: https://HOST/api/v3)")
    token_file: str = F("", "file holding the GitHub token ('' = $CREDENTIALS_DIRECTORY/github-token)")
    poll_interval: float = F(60.0, "seconds between issue polls", 1.0, 86400.0)
    allowlist: tuple = F((), "logins trusted besides collaborators with write access (bots included)")
    once_timeout_s: float = F(120.0, "`daemon --once` exits within this even when GitHub is down", 1.0, 86400.0)
    write_interval_s: float = F(1.0, "outbox: at least this long between GitHub writes", 0.0, 3600.0)
    write_per_minute: int = F(80, "outbox: at most this many GitHub writes in any 60 s, all hosts together "
                              "(GitHub's secondary limit on content-creating requests: 80 a minute)", 1, 100000)
    write_per_hour: int = F(500, "outbox: at most this many GitHub writes in any hour, all hosts together (GitHub: "
                            "500 an hour); a secondary-limit 403 past it waits its Retry-After, nothing lost",
                            1, 1000000)
    max_rate_limit_wait_s: float = F(15.0, "longest a single request may sleep for a rate limit", 0.0, 3600.0)
    github_timeout_s: float = F(15.0, "HTTP timeout of one GitHub request", 0.5, 600.0)
    outbox_lease_s: float = F(300.0, "outbox: a sender's claim on one write (several hosts share the outbox); above "
                              "the longest request (github_timeout_s, retries, max_rate_limit_wait_s)", 5.0, 86400.0)
    marker_settle_s: float = F(10.0, "outbox: after an uncertain comment (a 5xx, a timeout, a kill), wait this long "
                               "past the moment it could still land before searching for its marker (GitHub's "
                               "lists lag a created comment by seconds)", 0.0, 3600.0)
    writer_lease_s: float = F(60.0, "several hosts: one daemon at a time advances the pipeline and writes the "
                              "documents; its lease, renewed every third of it (a dead writer's successor waits "
                              "this long)", 3.0, 86400.0)
    tracker_idle_s: float = F(0.5, "the tracker thread (polls, outbox, approvals) looks for due writes this often "
                              "when idle", 0.01, 60.0)
    tracker_join_s: float = F(2.0, "at a stop, the longest the daemon waits for a GitHub request in flight (the "
                              "write stays in the outbox, checked for by its marker at the next start)", 0.0, 600.0)
    github_backoff_s: float = F(5.0, "first pause after a GitHub 5xx or network error; doubles per failure up "
                                "to 300 s (never hammer an outage)", 0.0, 3600.0)
    resync_s: float = F(86400.0, "a full re-read of the open issues this often, besides the `since` "
                        "cursor (catches anything a cursor could miss); 0 = never", 0.0, 10**7)
    comment_max_chars: int = F(65536, "GitHub's comment body limit", 1000, 10**6)
    archive_dir: str = F("", "cold tier for finished runs ('' = no archiving)")
    archive_after_days: float = F(14.0, "finished runs older than this move to archive_dir", 0.0, 10**5)
    archive_every_s: float = F(3600.0, "the daemon's archiving pass runs this often", 60.0, 10**7)
    git_push: bool = F(False, "push the findings commits")
    git_author: str = F("refinery <refinery@localhost>", "author of refinery's commits")
    docs_dir: str = F("docs", "where findings/, registry/ and ROADMAP.md are written (relative: under the repo)")
    git_commit: bool = F(True, "commit refinery's documents when docs_dir is inside a git repository")
    progress_edit_s: float = F(60.0, "the per-idea progress comment is edited at most this often", 1.0, 86400.0)
    full_requires_approval: bool = F(False, "full runs wait for a 👍 from a writer on the replication's result")
    graveyard_max_diff: int = F(2, "intake: a new idea resembles a killed one when their effective specs differ "
                                "in at most this many idea-defining keys (budgets and seeds ignored)", 0, 1000)
    noise_floor_every_s: float = F(0.0, "re-run the control (reasoner) on fresh seeds this often when its lane is "
                                   "idle, to measure the seed-to-seed spread per task; 0 = off (604800 = weekly)",
                                   0.0, 10**9)
    noise_floor_seeds: int = F(5, "seeds per depth task in one noise-floor run", 2, 100)
    noise_floor_lane: str = F("gpu", "the lane the noise-floor run waits for and runs on", choices=("gpu", "cpu"))
    calibrate_every_s: float = F(0.0, "when the cpu lane is idle, queue the next missing calibration unit (one "
                                 "independent ablation, kind `calibrate`; experiments/calibration.py) at most this "
                                 "often; the curve builds up over days; 0 = off", 0.0, 10**9)
    calibrate_spec: str = F("", "the calibration setting, a spec file ('' = experiments/specs/calibration.toml)")
    calibrate_per_grade: int = F(10, "independent calibration ablations wanted per grade (CALIBRATION_GRADES)",
                                 1, 500)
    calibrate_grades: tuple = F(("aa", "e5", "e10", "e15", "e20"), "the calibration grades the idle daemon "
                                "builds, in turn (CALIBRATION_GRADES)")
    watchdog: bool = F(True, "send systemd watchdog pings when $WATCHDOG_USEC is set")
    watchdog_s: float = F(180.0, "systemd WatchdogSec: a loop silent this long is restarted; above the "
                          "longest single step (GitHub timeouts, rate-limit waits, a git commit)", 10.0, 86400.0)
    stop_timeout_s: float = F(900.0, "systemd TimeoutStopSec: a warm stop (finish the step, checkpoint, exit 75) "
                              "must fit; SIGKILL after it", 30.0, 86400.0)


# --------------------------------------------------------------------------- coder (Claude Code, run headless)
@dataclass(frozen=True)
class CoderConfig:
    coder: str = F("off", "who works agent-lane items: off (an outside agent claims them) or claude (the daemon runs "
                   "the Claude Code CLI on each: agent/coder/)", choices=("off", "claude"))
    coder_workers: int = F(1, "agent-lane items the daemon's coder runs at once", 1, 16)
    claude_bin: str = F("", "the Claude Code CLI; '' = node_modules/.bin/claude under the repository (`make setup`)")
    claude_version: str = F("", "the CLI version the coder accepts; '' = the one pinned in package.json, 'any' = any")
    coder_model: str = F("", "--model for the sessions; '' = the CLI's default")
    coder_repo: str = F("", "the checkout whose default branch items start from; '' = the repository itself")
    coder_base: str = F("", "the branch items start from; '' = the remote's HEAD, else the checkout's branch")
    git_remote: str = F("origin", "the remote a finished branch is pushed to (GitHub tracker)")
    coder_credential_file: str = F("", "file holding ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN ('' = the "
                                   "environment, else $CREDENTIALS_DIRECTORY/anthropic-token)")
    coder_max_turns: int = F(80, "model turns (API responses, counted by refinery) before a session is stopped",
                             1, 10000)
    coder_wall_s: float = F(3600.0, "wall-clock limit of one session, seconds", 1.0, 86400.0)
    coder_silence_s: float = F(600.0, "a session printing nothing this long is stopped (hung headless runs "
                               "stalled ~405 s in claude-code #83859), seconds", 1.0, 86400.0)
    coder_grace_s: float = F(20.0, "SIGINT to the CLI, then SIGKILL after this many seconds", 0.0, 600.0)
    coder_max_usd: float = F(10.0, "spend cap of one item over all its sessions, USD", 0.0, 10000.0)
    coder_usd_per_day: float = F(50.0, "spend cap of the coder per UTC day, USD; items wait queued past it",
                                 0.0, 100000.0)
    coder_usd_per_mtok_in: float = F(5.0, "refinery's own spend estimate: USD per million input tokens "
                                     "(the CLI's total_cost_usd is an estimate too; the larger is kept)", 0.0, 1000.0)
    coder_usd_per_mtok_out: float = F(25.0, "... and per million output tokens", 0.0, 1000.0)
    coder_api_retries: int = F(6, "429/529 retries the CLI may make in one session before refinery stops it and "
                               "backs off (no attempt spent)", 0, 1000)
    coder_backoff_s: float = F(120.0, "first wait after a 429/529 stop; doubles per stop, up to coder_backoff_max_s",
                               0.0, 86400.0)
    coder_backoff_max_s: float = F(3600.0, "the longest back-off after 429/529 stops, seconds", 0.0, 86400.0)
    coder_cli_recheck_s: float = F(60.0, "a missing or wrong CLI (items wait) is looked for again this often, seconds",
                                   1.0, 86400.0)
    coder_check_cmd: str = F("make test-fast", "the project's check, run in the item's worktree after the session")
    coder_check_s: float = F(1800.0, "time limit of the check command, seconds", 1.0, 86400.0)
    coder_protected: tuple = F(("experiments/gate.py", "experiments/tasks/", "experiments/calibrate.py",
                                "experiments/calibration.py", "config.py::GateConfig"),
                               "paths a branch may not touch (PATH, DIR/ or FILE::Class for one class's lines): the "
                               "gate, the task generators, the gate's thresholds")
    coder_protected_label: str = F("gate-change", "an issue label that allows touching coder_protected")
    coder_git_author: str = F("refinery-coder <coder@refinery.invalid>", "git identity of the sessions' commits")
    # code ideas (`ideas` + a lane + `code`) and pinned stage sources (agent/daemon/source.py, jobqueue/srctree.py)
    stage_source: str = F("pinned", "where a stage's child runs from: pinned (a read-only worktree of the commit "
                          "recorded at enqueue, runs/src/<sha>/) or checkout (the daemon's checkout as it is, "
                          "uncommitted changes included: development and the test suite only)",
                          choices=("pinned", "checkout"))
    code_auto_approve: str = F("off", "code ideas: cpu = the cpu lane's smoke and ablation of a branch run before "
                               "a writer's 👍 (said on the issue); off = every stage waits for one",
                               choices=("off", "cpu"))
    coder_smoke_s: float = F(900.0, "code ideas: time limit of the CPU smoke stage of the issue's spec that the "
                             "coder's checks run in the item's worktree, seconds", 1.0, 86400.0)
    src_keep_days: float = F(7.0, "a pinned source tree (runs/src/<sha>/) that no live job uses is removed after "
                             "this many days unused, days; 0 = kept for ever", 0.0, 3650.0)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "train": TrainConfig, "stages": StageConfig, "gate": GateConfig,
    "hardware": HardwareConfig, "queue": QueueConfig, "daemon": DaemonConfig, "coder": CoderConfig,
}
# Environment aliases: these names are part of the contract (DESIGN.md, Settings).
ENV_ALIASES = {"MODEL_ARCH": "arch"}


@dataclass(frozen=True)
class Settings:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: StageConfig = field(default_factory=StageConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    coder: CoderConfig = field(default_factory=CoderConfig)
    sources: tuple = ()  # ((field, source), ...) for fields not at their default

    # ---- derived values: computed here so no module re-derives them differently
    @property
    def dims(self) -> dict[str, int]:
        """d_model, n_heads, d_mlp after the size preset (explicit fields win)."""
        d = dict(SIZE_PRESETS[self.model.preset])
        for k in d:
            if getattr(self.model, k):
                d[k] = getattr(self.model, k)
        return d

    @property
    def r_eval(self) -> int:
        return self.model.r_eval or self.model.r_mean

    @property
    def cpu_worker_count(self) -> int:
        """queue.cpu_workers, or the default for this machine when it is 0."""
        return self.queue.cpu_workers or _cpu_workers_default()

    @property
    def host(self) -> str:
        """queue.host_name, or this machine's host name when it is empty."""
        import socket
        return self.queue.host_name or socket.gethostname()

    @property
    def runs_path(self) -> Path:
        """queue.runs_dir as an absolute path (relative paths are under the repository). The one place the
        runs directory is derived: run directories, locks, specs, the outbox's files, runs/agent/."""
        p = Path(self.queue.runs_dir)
        return p if p.is_absolute() else ROOT / p

    @property
    def queue_url(self) -> str:
        """queue.db_url with a relative SQLite path made absolute under the repository."""
        url = self.queue.db_url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(ROOT / url[len(prefix):])
        return url

    def get(self, key: str) -> Any:
        return getattr(getattr(self, FIELD_SECTION[key]), key)

    def flat(self) -> dict[str, Any]:
        return {k: self.get(k) for k in FIELD_SECTION}

    def source_of(self, key: str) -> str:
        return dict(self.sources).get(key, "default")

    def replace(self, overrides: Mapping[str, Any], source: str = "override",
                sources: Mapping[str, str] | None = None) -> Settings:
        """A copy with flat `overrides` applied; raises ConfigError listing every problem."""
        problems: list[Problem] = []
        per_section: dict[str, dict[str, Any]] = {}
        new_sources = dict(self.sources)
        for key, raw in overrides.items():
            src = (sources or {}).get(key, source)
            if key not in FIELD_SECTION:
                problems.append(Problem(key, "unknown key", suggest(key), src))
                continue
            try:
                value = coerce(key, raw)
            except ConfigError as e:
                problems.extend(dataclasses.replace(p, source=src) for p in e.problems)
                continue
            per_section.setdefault(FIELD_SECTION[key], {})[key] = value
            new_sources[key] = src
        if problems:
            raise ConfigError(problems)
        sections = {name: dataclasses.replace(getattr(self, name), **per_section.get(name, {}))
                    for name in SECTIONS}
        out = Settings(**sections, sources=tuple(sorted(new_sources.items())))
        out.validate()
        return out

    def validate(self) -> None:
        """Cross-field rules a single range cannot express."""
        m, probs = self.model, []
        if m.r_min > m.r_max:
            probs.append(Problem("r_min", f"r_min = {m.r_min} exceeds r_max = {m.r_max}", "lower r_min or raise r_max"))
        if m.r_mean < m.r_min or (m.r_sampler == "uniform" and m.r_mean > m.r_max):
            probs.append(Problem("r_mean", f"r_mean = {m.r_mean} outside [r_min, r_max] = [{m.r_min}, {m.r_max}]",
                                 "set r_mean between r_min and r_max"))
        if max(m.r_max, self.r_eval, 2 * m.r_mean) > m.r_limit:
            probs.append(Problem("r_limit", f"r_limit = {m.r_limit} is below the deepest pass used "
                                 f"({max(m.r_max, self.r_eval, 2 * m.r_mean)})", "raise r_limit"))
        d = self.dims
        if d["d_model"] % d["n_heads"] or (d["d_model"] // d["n_heads"]) % 2:
            probs.append(Problem("n_heads", f"d_model = {d['d_model']} must split into {d['n_heads']} heads of "
                                 "even size (RoPE)", "pick n_heads dividing d_model"))
        for t in self.stages.tasks + (self.stages.control_task,):
            if t not in TASK_NAMES:
                probs.append(Problem("tasks", f"unknown task {t!r}", f"choose from {', '.join(TASK_NAMES)}"))
        for g in self.daemon.calibrate_grades:
            if g not in CALIBRATION_GRADES:
                probs.append(Problem("calibrate_grades", f"unknown calibration grade {g!r}",
                                     f"choose from {', '.join(CALIBRATION_GRADES)}"))
        if self.queue.heartbeat_s >= self.queue.lease_s:
            probs.append(Problem("heartbeat_s", f"heartbeat_s = {self.queue.heartbeat_s} must be below lease_s = "
                                 f"{self.queue.lease_s}", "lower heartbeat_s (a third of lease_s is usual)"))
        scheme = self.queue.db_url.split("://", 1)[0] if "://" in self.queue.db_url else ""
        if scheme not in DB_URL_SCHEMES:  # the scheme only: a URL may hold a password
            probs.append(Problem("db_url", f"unsupported queue database URL (scheme {scheme or 'missing'!r})",
                                 "use sqlite:///PATH or postgresql://USER@HOST/DB"))
        if self.daemon.tracker == "github" and not GITHUB_REPO_RE.fullmatch(self.daemon.github_repo):
            probs.append(Problem("github_repo", f"tracker = github needs github_repo as owner/name, got "
                                 f"{self.daemon.github_repo!r}", "set REFINERY_GITHUB_REPO=owner/name"))
        api = urllib.parse.urlsplit(self.daemon.github_api_url)
        if self.daemon.tracker == "github" and (api.scheme not in ("http", "https") or not api.hostname):
            probs.append(Problem("github_api_url", f"{self.daemon.github_api_url!r} is not an http(s) URL with a "
                                 "host", "set REFINERY_GITHUB_API_URL=https://api.github.com (GitHub Enterprise: "
                                 "https://HOST/api/v3)"))
        if probs:
            raise ConfigError(probs)


TASK_NAMES = ("khop", "s5", "listops", "summod", "copy")  # experiments/tasks/ implements these
CORPUS_VAL_FRAC = 0.05  # `refinery corpus build`: the share of documents (of one document: its tail) for val
CORPUS_MAX_BYTES = 4_000_000  # ... and the cap on the text it reads (--max-bytes 0: none)

FIELD_SECTION: dict[str, str] = {}
FIELD_META: dict[str, dict] = {}
FIELD_TYPE: dict[str, type] = {}
for _name, _cls in SECTIONS.items():
    for _f in dataclasses.fields(_cls):
        assert _f.name not in FIELD_SECTION, f"field name {_f.name} used twice: names must be unique"
        FIELD_SECTION[_f.name] = _name
        FIELD_META[_f.name] = dict(_f.metadata)
        FIELD_TYPE[_f.name] = type(_f.default)


def suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(FIELD_SECTION), n=1, cutoff=0.5)
    return f'did you mean "{close[0]}"?' if close else "see `refinery config` for the known keys"


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def coerce(key: str, raw: Any) -> Any:
    """Convert raw (a string from the environment, or a TOML value) to key's type and check its range."""
    typ, meta = FIELD_TYPE[key], FIELD_META[key]

    def bad(msg: str, hint: str) -> ConfigError:
        return ConfigError([Problem(key, msg, hint)])

    try:
        if typ is bool:
            if isinstance(raw, bool):
                value = raw
            elif isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
                value = raw.strip().lower() in _TRUE
            else:
                raise ValueError
        elif typ is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(raw.replace("_", "")) if isinstance(raw, str) else int(raw)
        elif typ is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        elif typ is tuple:
            if isinstance(raw, str):
                value = tuple(s.strip() for s in raw.split(",") if s.strip())
            elif isinstance(raw, (list, tuple)) and all(isinstance(s, str) for s in raw):
                value = tuple(raw)
            else:
                raise ValueError
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except ValueError:
        kind = {tuple: "a list of strings", bool: "true or false"}.get(typ, typ.__name__)
        raise bad(f"{raw!r} is not {kind}", f"write {key} as {kind}") from None
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices and value not in choices:
        raise bad(f"{value!r} is not one of {', '.join(map(str, choices))}", suggest_choice(value, choices))
    if lo is not None and (value < lo or (meta.get("open_lo") and value == lo) or value > hi):
        left = "(" if meta.get("open_lo") else "["
        raise bad(f"{key} = {value} is out of range {left}{lo:g}, {hi:g}]", f"use a value in {left}{lo:g}, {hi:g}]")
    return value


def suggest_choice(value: Any, choices: tuple) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.4)
    return f'did you mean "{close[0]}"?' if close else f"choose one of {', '.join(map(str, choices))}"


# --------------------------------------------------------------------------- loading
def env_overrides(env: Mapping[str, str], origin: str = "env") -> dict[str, tuple[str, str]]:
    """{field: (raw value, source)} from REFINERY_<FIELD> and the aliases; unknown REFINERY_ names too."""
    out: dict[str, tuple[str, str]] = {}
    for name, raw in env.items():
        if name in ENV_ALIASES:
            out[ENV_ALIASES[name]] = (raw, f"{origin}:{name}")
        elif name.startswith(ENV_PREFIX) and name not in NON_FIELD_ENV:
            out[name[len(ENV_PREFIX):].lower()] = (raw, f"{origin}:{name}")
    return out


# REFINERY_* variables that are not config fields (read by other code, documented in the README).
# REFINERY_ENV_FILE: a file of KEY=VALUE lines (systemd EnvironmentFile= syntax) read on every load(),
# its values winning over the environment, so `systemctl reload` (SIGHUP) picks up edits; a leading
# "-" (as in systemd) makes a missing file no error.
# REFINERY_REQUIRE_POSTGRES, REFINERY_REQUIRE_FAKETIME and REFINERY_TEST_PG are the test suite's (tests/conftest.py,
# tests/test_clock_skew.py; .ci/run sets the first two).
NON_FIELD_ENV = {"REFINERY_PROFILE", "REFINERY_ENV_FILE", "REFINERY_REQUIRE_POSTGRES", "REFINERY_REQUIRE_FAKETIME",
                 "REFINERY_TEST_PG"}


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and #/; comments skipped, one pair of surrounding quotes removed).
    ConfigError for an unreadable file (unless `path` starts with "-") or a line that is not KEY=VALUE."""
    optional, path = path.startswith("-"), path.removeprefix("-")
    src, out = f"env:REFINERY_ENV_FILE={path}", {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        if optional:
            return {}
        raise ConfigError([Problem("REFINERY_ENV_FILE", f"cannot read {path}: {e.strerror or e}",
                                   "point it at an existing file, or prefix the path with '-' to allow none",
                                   src)]) from None
    for n, line in enumerate(map(str.strip, lines), 1):
        key, eq, value = (x.strip() for x in line.partition("="))
        if line and line[0] not in "#;" and (not eq or not key.replace("_", "").isalnum()):
            raise ConfigError([Problem("REFINERY_ENV_FILE", f"{path} line {n} is not KEY=VALUE: {line[:60]!r}",
                                       "write one NAME=value per line", src)])
        if line and line[0] not in "#;":
            out[key] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
    return out


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Defaults < hardware profile < environment < REFINERY_ENV_FILE. Raises ConfigError naming every bad field."""
    env = os.environ if env is None else env
    file_vars = read_env_file(env["REFINERY_ENV_FILE"]) if env.get("REFINERY_ENV_FILE") else {}
    file_vars.pop("REFINERY_ENV_FILE", None)  # no chains of files
    settings = Settings()
    profile = file_vars.get("REFINERY_PROFILE", env.get("REFINERY_PROFILE", settings.hardware.profile))
    if profile not in HARDWARE_PROFILES:
        raise ConfigError([Problem("profile", f"unknown hardware profile {profile!r}",
                                   suggest_choice(profile, tuple(HARDWARE_PROFILES)), "env:REFINERY_PROFILE")])
    prof = {"profile": profile, **HARDWARE_PROFILES[profile]}
    settings = settings.replace(prof, source=f"profile:{profile}")
    found = env_overrides(env)
    found.update(env_overrides(file_vars, origin="file"))  # the file wins over the environment
    raw = {k: v for k, (v, _) in found.items()}
    settings = settings.replace(raw, sources={k: s for k, (_, s) in found.items()})
    return settings


def compute_dtype(device_type: str, capability: tuple[int, int] | None, requested: str = "auto") -> tuple[str, str]:
    """The float16 policy, decided once: (dtype name, the reason as text). Torch-free.

    CUDA: float16 autocast + GradScaler; bfloat16 only on compute capability ≥ 8.0
    (Turing, sm_75, emulates it about 10x slower). CPU: float32 by default; float16 on request runs the
    same autocast + GradScaler code as CUDA (torch ≥ 2.4 autocasts float16 on CPU), slowly: it is for tests
    and CI, so the float16 path runs where no GPU is.
    """
    if device_type != "cuda":
        if requested == "float16":
            return "float16", (f"{device_type}: float16 autocast with GradScaler, as requested (the CUDA path; "
                               "slow on a CPU: for tests and CI)")
        if requested not in ("auto", "float32"):
            raise ConfigError([Problem("dtype", f"{requested} on {device_type} is not supported",
                                       "use dtype = auto, float32 or float16 (slow: tests and CI) on CPU")])
        return "float32", f"{device_type}: float32 (no fast half-precision matmuls on CPU)"
    cap = capability or (0, 0)
    if requested == "bfloat16" and cap < (8, 0):
        raise ConfigError([Problem("dtype", f"bfloat16 needs compute capability 8.0+, GPU is sm_{cap[0]}{cap[1]}",
                                   "use dtype = auto or float16 (with GradScaler) on Turing and older")])
    if requested == "float32":
        return "float32", f"cuda sm_{cap[0]}{cap[1]}: float32 forced by config"
    if requested == "bfloat16":
        return "bfloat16", f"cuda sm_{cap[0]}{cap[1]}: bfloat16 requested and supported"
    return "float16", (f"cuda sm_{cap[0]}{cap[1]}: float16 autocast with GradScaler"
                       + ("; no bfloat16 below sm_80" if cap < (8, 0) else ""))


def read_github_token(env: Mapping[str, str] | None = None, settings: Settings | None = None) -> str | None:
    """GITHUB_TOKEN, else token_file, else $CREDENTIALS_DIRECTORY/github-token. Never logged."""
    env = os.environ if env is None else env
    if env.get("GITHUB_TOKEN"):
        return env["GITHUB_TOKEN"].strip()
    path = (settings.daemon.token_file if settings else "") or ""
    if not path and env.get("CREDENTIALS_DIRECTORY"):
        path = os.path.join(env["CREDENTIALS_DIRECTORY"], "github-token")
    if path and os.path.isfile(path):
        return Path(path).read_text().strip() or None
    return None


def range_text(key: str) -> str:
    """A field's allowed values as `refinery config` shows them: a|b|c, [lo, hi], (lo, hi] or ''."""
    m = FIELD_META[key]
    if m["choices"]:
        return "|".join(map(str, m["choices"]))
    if m["lo"] is None and m["hi"] is None:
        return ""
    lo, hi = ("" if x is None else f"{x:g}" for x in (m["lo"], m["hi"]))
    return f"{'(' if m['open_lo'] else '['}{lo}, {hi}]"


URL_SECRET_PARAMS = ("password", "sslpassword")  # libpq URI parameters that carry a secret
# Fields never handed to a stage child nor written under runs/: the database URL (it may hold a password) and the
# paths of credentials (jobqueue/runner.py passes every other effective setting to its children)
SECRET_FIELDS = ("db_url", "token_file", "coder_credential_file")


def env_value(value: Any) -> str:
    """A field's value as an environment variable holds it, so that coerce() reads back the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return repr(value) if isinstance(value, float) else str(value)


def hide_url_password(url: str) -> str:
    """url with its password masked as *** : the one in user:password@ and any ?password= (libpq reads both)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = userinfo.split(":", 1)[0] + ":***@" + host
    query = "&".join(f"{k}=***" if k.lower() in URL_SECRET_PARAMS else f"{k}={v}" if sep else k
                     for k, sep, v in (kv.partition("=") for kv in parts.query.split("&"))) if parts.query else ""
    # by string replacement: urlunsplit would turn sqlite:////abs/path into sqlite://abs/path
    return url.replace("//" + parts.netloc, "//" + netloc, 1).replace("?" + parts.query, "?" + query, 1)


def describe(settings: Settings) -> list[dict[str, str]]:
    """Rows {section, field, value, range, source} for `refinery config` (the value as it is: the table shows its
    repr, --json the value); secrets are never fields, only whether the token is set; db_url's password is masked."""
    rows = [{"section": FIELD_SECTION[k], "field": k, "value": hide_url_password(v) if k == "db_url" else v,
             "range": range_text(k), "source": settings.source_of(k)} for k, v in settings.flat().items()]
    return rows + [
        {"section": "derived", "field": "dims", "value": settings.dims, "range": "",
         "source": "preset " + settings.model.preset},
        {"section": "derived", "field": "cpu_workers", "value": settings.cpu_worker_count, "range": "",
         "source": "queue.cpu_workers"},
        {"section": "secret", "field": "github token", "range": "", "source": "env/file",
         "value": "set" if read_github_token(settings=settings) else "not set"}]




for _task, _levels in DIFFICULTY_LADDERS.items():  # a ladder only names spec fields, its knob first in every level
    assert _task in TASK_NAMES and _levels, _task
    assert all(next(iter(lv)) == next(iter(_levels[0])) and set(lv) <= set(FIELD_SECTION) for lv in _levels), _task
