"""Plots a person reads at a glance (matplotlib, Agg backend, PNG): loss curves per arm, accuracy against
loop depth r per arm with one line per seed, and a per-seed strip plot of the primary endpoint.

Inputs are plain dicts of lists (what the stages already keep), so plotting never touches a model.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first
import numpy as np  # noqa: E402

COLORS = {"candidate": "tab:blue", "control": "tab:orange", "stack": "tab:green"}


def _grid(n: int):
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    return fig, axes[0]


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def loss_curves(runs: dict[str, dict[str, list[list[tuple[int, float]]]]], path: Path, title: str = "") -> str:
    """runs[task][arm] = one [(step, loss), ...] per seed."""
    fig, axes = _grid(max(len(runs), 1))
    for ax, (task, arms) in zip(axes, runs.items()):
        for arm, seeds in arms.items():
            color = COLORS.get(arm)
            for j, pts in enumerate(seeds):
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, color=color, alpha=0.5, lw=1, label=arm if j == 0 else None)
        ax.set(title=f"{task}", xlabel="step", ylabel="train loss (nats)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(title or "training loss per arm (one line per seed)", fontsize=10)
    return _save(fig, path)


def depth_curves(curves: dict[str, dict[str, list[list[float]]]], path: Path, r_bar: int, title: str = "",
                 floors: dict[str, float] | None = None) -> str:
    """curves[task][arm] = one accuracy-per-r list per seed (r = 1, 2, …)."""
    fig, axes = _grid(max(len(curves), 1))
    for ax, (task, arms) in zip(axes, curves.items()):
        for arm, seeds in arms.items():
            color = COLORS.get(arm)
            for c in seeds:
                ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.35, lw=1, marker=".")
            if seeds:
                L = min(len(c) for c in seeds)
                mean = np.mean([c[:L] for c in seeds], axis=0)
                ax.plot(range(1, L + 1), mean, color=color, lw=2.5, label=f"{arm} (mean of {len(seeds)})")
        ax.axvline(r_bar, color="grey", ls="--", lw=1)
        if floors and task in floors:
            ax.axhline(100 * floors[task], color="grey", ls=":", lw=1, label="trivial answer")
        ax.set(title=task, xlabel="loop passes r (read-out after each)", ylabel="test accuracy (%)", ylim=(0, 101))
        ax.legend(fontsize=8)
    fig.suptitle(title or f"accuracy against depth (dashed: r̄ = {r_bar})", fontsize=10)
    return _save(fig, path)


def strip(values: dict[str, dict[str, list[float]]], path: Path, title: str = "") -> str:
    """values[task][arm] = the primary endpoint per seed."""
    fig, axes = _grid(max(len(values), 1))
    rng = np.random.default_rng(0)
    for ax, (task, arms) in zip(axes, values.items()):
        for i, (arm, vals) in enumerate(arms.items()):
            x = i + rng.uniform(-0.12, 0.12, len(vals))
            ax.scatter(x, vals, color=COLORS.get(arm), s=30, zorder=3)
            if vals:
                ax.hlines(np.mean(vals), i - 0.3, i + 0.3, color=COLORS.get(arm), lw=2)
        ax.set_xticks(range(len(arms)), list(arms))
        ax.set(title=task, ylabel="accuracy at r̄ (%)", ylim=(0, 101))
    fig.suptitle(title or "primary endpoint per seed (bar: mean)", fontsize=10)
    return _save(fig, path)


def series(points: dict[str, list[tuple[int, float]]], path: Path, ylabel: str, title: str,
           xlabel: str = "step") -> str:
    """One line per key: e.g. validation loss per run in the full stage (x: training step, or loop depth r)."""
    fig, axes = _grid(1)
    for k, pts in points.items():
        if pts:
            x, y = zip(*pts)
            arm = k.split("/")[0]
            axes[0].plot(x, y, color=COLORS.get(arm), alpha=0.7, label=k)
    axes[0].set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes[0].legend(fontsize=7)
    return _save(fig, path)
