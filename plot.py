"""Figures from dqn_redo.py runs: episodic return and dormant-neuron fractions, aggregated over seeds.

    python plot.py                                  # every run under runs/, figures into img/
    python plot.py runs/rr1 --out-dir img/rr1 --note "DemonAttack, 100k steps, 2-core CPU"

Runs are grouped by game, replay ratio and ReDo on/off (read from each run's logged hyperparameters).
Each curve is the mean (or IQM) over the group's seeds with a 95 % bootstrap confidence band; its
legend says how many runs it has. Runs of different lengths, and runs still in progress, are fine:
at each point a curve uses the runs that reached it.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import tyro


@dataclass
class Args:
    paths: tyro.conf.Positional[list[str]] = field(default_factory=lambda: ["runs"])
    """run folders, or folders to search for them"""
    out_dir: str = "figures"
    """where the PNG figures go (img/ holds the committed figures: pass --out-dir img to replace them)"""
    aggregate: Literal["mean", "iqm"] = "mean"
    """statistic across the seeds of a group (IQM: the mean of the middle 50 %)"""
    bins: int = 40
    """points per curve: each run's values are averaged within equal windows of agent steps"""
    bootstrap_samples: int = 2000
    """resamples of the runs for the 95 % confidence band"""
    note: str = ""
    """a line under each figure's title: how the runs were made (game, steps, hardware)"""
    prefix: str = ""
    """prefix of the PNG file names"""


@dataclass
class Run:
    path: str
    env_id: str
    replay_ratio: float
    redo: bool
    redo_tau: float
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]  # tag -> (agent steps, values)

    @property
    def group(self) -> tuple[str, float, bool]:
        return self.env_id, self.replay_ratio, self.redo


def find_run_dirs(paths: list[str]) -> list[str]:
    found = set()
    for path in paths:
        for folder, _, files in os.walk(path):
            if any(name.startswith("events.out.tfevents") for name in files):
                found.add(folder)
    return sorted(found)


def load_run(path: str) -> Run | None:
    """A run folder's scalars and hyperparameters; None if it has no hyperparameters (not a dqn_redo run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    if "hyperparameters/text_summary" not in events.Tags()["tensors"]:
        return None
    table = events.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    params = dict(line.strip("|").split("|", 1) for line in table.splitlines()[2:] if line.count("|") >= 3)
    scalars = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        scalars[tag] = (np.array([p.step for p in points]), np.array([p.value for p in points]))
    return Run(path, params["env_id"], float(params["replay_ratio"]), params["enable_redo"] == "True",
               float(params["redo_tau"]), scalars)


def iqm(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean: the mean of the middle half of the sorted values (all of them for n < 4)."""
    values = np.sort(values, axis=axis)
    n = values.shape[axis]
    cut = n // 4
    return np.take(values, range(cut, n - cut), axis=axis).mean(axis=axis)


def binned(run: Run, tag: str, edges: np.ndarray) -> np.ndarray:
    """The run's mean value within each window of steps; NaN where it logged nothing."""
    steps, values = run.scalars[tag]
    which = np.digitize(steps, edges) - 1
    sums = np.bincount(which[(which >= 0) & (which < len(edges) - 1)],
                       values[(which >= 0) & (which < len(edges) - 1)], minlength=len(edges) - 1)
    counts = np.bincount(which[(which >= 0) & (which < len(edges) - 1)], minlength=len(edges) - 1)
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def aggregate(per_run: np.ndarray, statistic, samples: int, rng: np.random.Generator):
    """Per point: the statistic over the runs that have a value there, and a 95 % bootstrap band."""
    center, low, high = (np.full(per_run.shape[1], np.nan) for _ in range(3))
    for j in range(per_run.shape[1]):
        column = per_run[:, j][~np.isnan(per_run[:, j])]
        if len(column) == 0:
            continue
        center[j] = statistic(column)
        resampled = column[rng.integers(0, len(column), size=(samples, len(column)))]
        low[j], high[j] = np.percentile(statistic(resampled, axis=1), [2.5, 97.5])
    return center, low, high


def group_label(group: tuple[str, float, bool], runs: list[Run]) -> str:
    env_id, replay_ratio, redo = group
    name = f"DQN + ReDo (tau={runs[0].redo_tau:g})" if redo else "DQN"
    return f"{name}, RR {replay_ratio:g} (n={len(runs)})"


def plot_panel(ax, groups: dict, tag: str, args: Args, scale: float = 1.0) -> None:
    from matplotlib import pyplot as plt

    statistic = (lambda x, axis=None: np.mean(x, axis=axis)) if args.aggregate == "mean" else (
        lambda x, axis=0: iqm(x, axis=axis))
    rng = np.random.default_rng(0)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (group, runs) in enumerate(sorted(groups.items())):
        runs = [run for run in runs if tag in run.scalars]
        if not runs:
            continue
        last_step = max(run.scalars[tag][0].max() for run in runs)
        edges = np.linspace(0, last_step + 1, args.bins + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        per_run = np.stack([binned(run, tag, edges) for run in runs]) * scale
        center, low, high = aggregate(per_run, statistic, args.bootstrap_samples, rng)
        color = colors[k % len(colors)]  # groups are sorted, so a group keeps its color across panels
        ok = ~np.isnan(center)
        ax.plot(centers[ok], center[ok], color=color, label=group_label(group, runs),
                linestyle="-" if group[2] else "--")
        ax.fill_between(centers[ok], low[ok], high[ok], color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("agent steps (4 frames each)")
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(3, 3))


def make_figures(runs: list[Run], args: Args) -> dict[str, "matplotlib.figure.Figure"]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    by_env: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_env[run.env_id][run.group].append(run)
    figures = {}
    statistic_name = "mean" if args.aggregate == "mean" else "IQM"
    for env_id, groups in sorted(by_env.items()):
        game = env_id.replace("/", "-")
        subtitle = f"{env_id}: {statistic_name} over seeds, 95 % bootstrap CI" + (f"\n{args.note}" if args.note else "")

        fig, ax = plt.subplots(figsize=(8.5, 4.8))
        plot_panel(ax, groups, "charts/episodic_return", args)
        ax.set_ylabel("episodic return (full game, unclipped)")
        ax.legend(fontsize=8)
        fig.suptitle(f"Episodic return\n{subtitle}", fontsize=10)
        figures[f"{args.prefix}{game}_return"] = fig

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, tau in zip(axes, ("0", "0.1")):
            plot_panel(ax, groups, f"dormant/tau={tau}/total", args, scale=100)
            ax.set_title(f"tau = {tau}", fontsize=10)
        axes[0].set_ylabel("dormant neurons, % of all 672 hidden")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Dormant neurons (measured before each recycling)\n{subtitle}", fontsize=10)
        figures[f"{args.prefix}{game}_dormant"] = fig

        layers = sorted({tag.split("/")[-1] for run in runs for tag in run.scalars
                         if tag.startswith("dormant/tau=0.1/") and not tag.endswith("/total")})
        fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 4.2), sharey=True, squeeze=False)
        for ax, layer in zip(axes[0], layers):
            plot_panel(ax, groups, f"dormant/tau=0.1/{layer}", args, scale=100)
            ax.set_title(layer, fontsize=10)
        axes[0][0].set_ylabel("dormant neurons at tau = 0.1, % of layer")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Dormant neurons per layer\n{subtitle}", fontsize=10)
        figures[f"{args.prefix}{game}_dormant_layers"] = fig
    for fig in figures.values():
        fig.tight_layout()
    return figures


def main(args: Args) -> None:
    run_dirs = find_run_dirs(args.paths)
    if not run_dirs:
        print(f"error: no TensorBoard event files under {', '.join(args.paths)}; train with dqn_redo.py first "
              "or give the folders of your runs", file=sys.stderr)
        sys.exit(2)
    runs = [run for run in map(load_run, run_dirs) if run is not None]
    if not runs:
        print(f"error: none of the {len(run_dirs)} run folders found has dqn_redo.py hyperparameters", file=sys.stderr)
        sys.exit(2)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, fig in make_figures(runs, args).items():
        path = os.path.join(args.out_dir, f"{name}.png")
        fig.savefig(path, dpi=120)
        print(f"wrote {path}")
    print(summary_table(runs))


def final_value(run: Run, tag: str, fraction: float = 0.1) -> float:
    """Mean of the values logged in the last `fraction` of the run's steps."""
    if tag not in run.scalars:
        return float("nan")
    steps, values = run.scalars[tag]
    return float(values[steps >= steps.max() - fraction * steps.max()].mean())


def summary_table(runs: list[Run]) -> str:
    """A markdown table: per group, each seed's end-of-run values, then their mean."""
    lines = ["| game | agent | runs | agent steps | return, last 10 % of steps | dormant % tau=0 (last 10 %) "
             "| dormant % tau=0.1 (last 10 %) |", "|-|-|-|-|-|-|-|"]
    for group in sorted({run.group for run in runs}):
        members = [run for run in runs if run.group == group]
        last_steps = [int(max(steps.max() for steps, _ in run.scalars.values())) + 1 for run in members]
        returns = [final_value(run, "charts/episodic_return") for run in members]
        dormant = {tau: [100 * final_value(run, f"dormant/tau={tau}/total") for run in members] for tau in ("0", "0.1")}
        show = lambda xs, digits: f"{np.nanmean(xs):.{digits}f} ({', '.join(f'{x:.{digits}f}' for x in xs)})"
        lines.append(f"| {group[0]} | {group_label(group, members)} | {len(members)} | "
                     f"{', '.join(f'{s:,}' for s in sorted(set(last_steps)))} | {show(returns, 0)} | "
                     f"{show(dormant['0'], 1)} | {show(dormant['0.1'], 1)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
