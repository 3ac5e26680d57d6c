"""Figures from dqn_redo.py runs: episodic return and dormant-neuron fractions, aggregated over seeds.

    python plot.py                                  # every run under runs/, figures into figures/
    python plot.py runs/rr1 --out-dir img/rr1 --note "DemonAttack, 100k steps, 2-core CPU"
    python plot.py runs/sweep --sweep               # across games, as the field reports it (rliable)

Runs are grouped by game, replay ratio, ReDo on/off and code (read from each run's logged hyperparameters; runs of
the authors' own agent, made with dopamine_reference.py, form their own group).
Each curve is the mean (or IQM) over the group's seeds with a 95 % bootstrap confidence band; its
legend says how many runs it has, and how far they go. Runs of different lengths, and runs still in progress, are
fine: at each point a curve uses the runs that reached it (`--max-steps` cuts every run to a common length).
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
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
    sweep: bool = False
    """aggregate across games: human-normalized scores, IQM and mean over runs and games with stratified bootstrap
    confidence intervals (rliable), per arm and replay ratio; the dormant fractions the same way; a per-game table"""
    final_fraction: float = 0.1
    """a run's score: its mean episodic return over this last fraction of its agent steps"""
    score: Literal["training", "evaluation"] = "training"
    """--sweep's table: score runs by their training returns (--final-fraction) or by their final evaluation's mean
    (eval/episodic_return: the Atari 100k convention)"""
    max_steps: int | None = None
    """use only each run's first this many agent steps: compares runs of different lengths at equal length"""
    windows: int | None = None
    """also print, per tag of --window-tags, each group's mean within consecutive windows of this many agent steps
    (e.g. 10000: the 10k-step means the README quotes)"""
    window_tags: list[str] = field(default_factory=lambda: [
        "dormant/tau=0/total", "dormant/tau=0.1/total", "dormant/again/total", "charts/episodic_return"])
    """the tags --windows prints (dormant shares in %; episodic returns with how many games end in each window)"""


@dataclass
class Run:
    path: str
    env_id: str
    replay_ratio: float
    redo: bool
    redo_tau: float
    code: str  # "" for dqn_redo.py; "Dopamine" for dopamine_reference.py
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]  # tag -> (agent steps, values)
    preset: str = "dqn"  # dqn_redo.py's --preset (runs from before it existed: dqn)
    hardware: str = ""  # as the run logged it (runs from before: "")
    commit: str = ""
    eval_at_cap: list[bool] | None = None  # evaluation.json's games cut by the episode cap (runs before it: None)

    @property
    def group(self) -> tuple[str, str, float, bool, str]:
        return self.env_id, self.preset, self.replay_ratio, self.redo, self.code

    @property
    def last_step(self) -> int:
        return int(max(steps.max() for steps, _ in self.scalars.values())) + 1

    @property
    def arm(self) -> str:
        agent = "DrQ(ε)" if self.preset == "drq-eps" else "DQN"
        name = f"{agent} + ReDo (tau={self.redo_tau:g})" if self.redo else agent
        return f"{name}, {self.code}'s code" if self.code else name


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
    at_cap = None
    if os.path.isfile(os.path.join(path, "evaluation.json")):
        with open(os.path.join(path, "evaluation.json")) as file:
            at_cap = json.load(file).get("at_cap")
    return Run(path, params["env_id"], float(params["replay_ratio"]), params["enable_redo"] == "True",
               float(params["redo_tau"]), params.get("code", ""), scalars, params.get("preset", "dqn"),
               params.get("hardware", ""), params.get("commit", ""), at_cap)


def games_at_cap(run: Run) -> str:
    """How many of the run's final evaluation games the episode cap cut: "-" without an evaluation, "?" if its
    evaluation.json predates the count."""
    if "eval/episodic_return" not in run.scalars:
        return "-"
    return "?" if run.eval_at_cap is None else str(sum(run.eval_at_cap))


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


def group_label(runs: list[Run]) -> str:
    """The arm and how many runs it has; where they end at different steps, how far all of them go."""
    ends = [round(run.last_step / 1000) for run in runs]  # in thousands of steps, as the legend shows them
    if min(ends) == max(ends):
        return f"{runs[0].arm}, RR {runs[0].replay_ratio:g} (n={len(runs)})"
    return (f"{runs[0].arm}, RR {runs[0].replay_ratio:g} "
            f"(n={len(runs)} to {min(ends)}k, {ends.count(max(ends))} to {max(ends)}k)")


def truncated(run: Run, max_steps: int) -> Run:
    """The run as it was after `max_steps` agent steps."""
    scalars = {tag: (steps[steps < max_steps], values[steps < max_steps])
               for tag, (steps, values) in run.scalars.items() if (steps < max_steps).any()}
    return replace(run, scalars=scalars)


def how_made(runs: list[Run]) -> str:
    """What a figure shows, from its runs' own logs: length, seeds per curve, hardware, commits."""
    ends = sorted({round(run.last_step / 1000) for run in runs})
    length = f"{ends[0]}k agent steps" if len(ends) == 1 else f"{ends[0]}k to {ends[-1]}k agent steps"
    seeds = sorted({len([r for r in runs if r.group == run.group]) for run in runs})
    hardware = "; ".join(sorted({run.hardware for run in runs if run.hardware})) or "hardware not logged"
    commits = ", ".join(sorted({run.commit for run in runs if run.commit})) or "not logged"
    return f"{length}, {'/'.join(map(str, seeds))} seed(s) per curve; {hardware}; commit {commits}"


def add_legend(axes, fontsize: int) -> None:
    """The legend, on the first panel with labelled lines: a run need not log every tag its figure plots."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=fontsize)
            return


def plot_panel(ax, groups: dict, tag: str, args: Args, scale: float = 1.0) -> None:
    from matplotlib import pyplot as plt

    statistic = (lambda x, axis=None: np.mean(x, axis=axis)) if args.aggregate == "mean" else (
        lambda x, axis=0: iqm(x, axis=axis))
    rng = np.random.default_rng(0)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (_, runs) in enumerate(sorted(groups.items())):
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
        ax.plot(centers[ok], center[ok], color=color, label=group_label(runs),
                linestyle=":" if runs[0].code else "-" if runs[0].redo else "--")
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
        game_runs = [run for runs_of_group in groups.values() for run in runs_of_group]
        band = ", 95 % bootstrap CI" if any(len(members) > 1 for members in groups.values()) else ""
        subtitle = f"{env_id}: {statistic_name} over seeds{band}\n{how_made(game_runs)}" + (
            f"\n{args.note}" if args.note else "")

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
        add_legend(axes, fontsize=8)
        fig.suptitle(f"Dormant neurons (measured before each recycling)\n{subtitle}", fontsize=10)
        figures[f"{args.prefix}{game}_dormant"] = fig

        layers = sorted({tag.split("/")[-1] for run in runs for tag in run.scalars
                         if tag.startswith("dormant/tau=0.1/") and not tag.endswith("/total")})
        if layers:
            again = any(f"dormant/again/{layer}" in run.scalars for run in game_runs for layer in layers)
            fig, axes = plt.subplots(1 + again, len(layers), figsize=(3.6 * len(layers), 4.2 * (1 + again)),
                                     sharex="col", sharey="row", squeeze=False)
            for k, layer in enumerate(layers):
                plot_panel(axes[0][k], groups, f"dormant/tau=0.1/{layer}", args, scale=100)
                axes[0][k].set_title(layer, fontsize=10)
                if again:
                    plot_panel(axes[1][k], groups, f"dormant/again/{layer}", args, scale=100)
                    axes[0][k].set_xlabel("")
            axes[0][0].set_ylabel("dormant neurons at tau = 0.1, % of layer")
            if again:
                axes[1][0].set_ylabel("of those at a check (ReDo: recycled),\n% dormant again at the next")
            add_legend(axes[0], fontsize=7)
            fig.suptitle(f"Dormant neurons per layer\n{subtitle}", fontsize=10)
            figures[f"{args.prefix}{game}_dormant_layers"] = fig

        if any("srank/fc1" in run.scalars for run in game_runs):
            fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
            plot_panel(axes[0], groups, "srank/fc1", args)
            axes[0].set_ylabel("srank of fc1's features (of 512)")
            plot_panel(axes[1], groups, "dormant/overlap/fc1", args, scale=100)
            axes[1].set_ylabel("fc1's dormant set now vs. ever before, overlap %")
            plot_panel(axes[2], groups, "dormant/again/total", args, scale=100)
            axes[2].set_ylabel("dormant at the last check (ReDo: recycled), and now, %")
            add_legend(axes, fontsize=8)
            fig.suptitle(f"Effective rank (Kumar et al.) and overlap of dormant sets (tau = --redo-tau)\n{subtitle}",
                         fontsize=10)
            figures[f"{args.prefix}{game}_srank_overlap"] = fig

        evaluated = {group: [run for run in members if "eval/episodic_return" in run.scalars]
                     for group, members in sorted(groups.items())}
        evaluated = {group: members for group, members in evaluated.items() if members}
        if evaluated:
            fig, ax = plt.subplots(figsize=(8.5, 4.8))
            for k, (group, members) in enumerate(evaluated.items()):
                per_run = [run.scalars["eval/episodic_return"][1].mean() for run in members]
                ax.bar(k, np.mean(per_run), color=f"C{k}", alpha=0.5)
                ax.scatter([k] * len(per_run), per_run, color=f"C{k}", zorder=3)
            ax.set_xticks(range(len(evaluated)), [group_label(m) for m in evaluated.values()], fontsize=7,
                          rotation=10)
            ax.set_ylabel("final evaluation: mean return\nper run (dots), their mean (bar)")
            ax.grid(alpha=0.3, axis="y")
            games = {len(run.scalars["eval/episodic_return"][1]) for m in evaluated.values() for run in m}
            fig.suptitle(f"Final evaluation ({'/'.join(map(str, sorted(games)))} full games per run)\n{subtitle}",
                         fontsize=10)
            figures[f"{args.prefix}{game}_eval"] = fig
    for fig in figures.values():
        fig.tight_layout()
    return figures


# ---------------------------------------------------------------------------------------------------
# Across games (--sweep)

# Random and human scores of the Atari 57 (Mnih et al. 2015, Nature, Extended Data Table 2; van Hasselt et al.
# 2016; the table Dopamine and rliable's papers normalize with), by ALE game name. It holds the paper's 17 games
# (its appendix) and a few more that are common in quick tests.
ATARI_RANDOM_HUMAN = {
    "Asterix": (210.0, 8503.3), "BeamRider": (363.9, 16926.5), "Breakout": (1.7, 30.5),
    "DemonAttack": (152.1, 1971.0), "DoubleDunk": (-18.6, -16.4), "Enduro": (0.0, 860.5),
    "IceHockey": (-11.2, 0.9), "Jamesbond": (29.0, 302.8), "MsPacman": (307.3, 6951.6), "Pong": (-20.7, 14.6),
    "Qbert": (163.9, 13455.0), "RoadRunner": (11.5, 7845.0), "Seaquest": (68.4, 42054.7),
    "SpaceInvaders": (148.0, 1668.7), "WizardOfWor": (563.5, 4756.5), "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3), "Alien": (227.8, 7127.7), "Freeway": (0.0, 29.6), "Boxing": (0.1, 12.1),
    # the rest of the Atari 100k set (same table; checked against google-deepmind/dqn_zoo atari_data.py)
    "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0), "BankHeist": (14.2, 753.1), "BattleZone": (2360.0, 37187.5),
    "ChopperCommand": (811.0, 7387.8), "CrazyClimber": (10780.5, 35829.4), "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5), "Hero": (1027.0, 30826.4), "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3), "PrivateEye": (24.9, 69571.3), "UpNDown": (533.4, 11693.2),
}
# The Atari 100k benchmark (Kaiser et al. 2019), the paper's DrQ(eps) games (Fig. 10d).
ATARI_100K_GAMES = ["Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
                    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
                    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
                    "RoadRunner", "Seaquest", "UpNDown"]
PAPER_GAMES = ["Asterix", "DemonAttack", "Seaquest", "WizardOfWor", "BeamRider", "RoadRunner", "Jamesbond", "Qbert",
               "Breakout", "Enduro", "SpaceInvaders", "Pong", "Zaxxon", "YarsRevenge", "MsPacman", "DoubleDunk",
               "IceHockey"]


def game_name(env_id: str) -> str:
    """'DemonAttack-v4', 'ALE/DemonAttack-v5', 'DemonAttackNoFrameskip-v4' -> 'DemonAttack'."""
    return env_id.split("/")[-1].split("-")[0].removesuffix("NoFrameskip")


class SweepError(Exception):
    pass


def human_normalized(score: np.ndarray, env_id: str) -> np.ndarray:
    if game_name(env_id) not in ATARI_RANDOM_HUMAN:
        raise SweepError(f"no random/human reference score for {env_id}: add it to ATARI_RANDOM_HUMAN in plot.py")
    random_score, human_score = ATARI_RANDOM_HUMAN[game_name(env_id)]
    return (score - random_score) / (human_score - random_score)


def carried_forward(values: np.ndarray) -> np.ndarray:
    """Each NaN (a window in which the run logged nothing, e.g. no game ended) takes the last value before it."""
    filled = values.copy()
    for i in range(1, len(filled)):
        if np.isnan(filled[i]):
            filled[i] = filled[i - 1]
    return filled


def run_score(run: Run, fraction: float, score: str) -> float:
    """A run's return: the mean over its last ``fraction`` of agent steps, or over its final evaluation's games."""
    if score == "evaluation":
        return float(run.scalars["eval/episodic_return"][1].mean())
    return final_value(run, "charts/episodic_return", fraction)


def final_scores(runs: list[Run], games: list[str], n_runs: int, fraction: float,
                 score: str = "training") -> dict[str, np.ndarray]:
    """Per algorithm, (runs, games, 1) human-normalized scores of :func:`run_score`."""
    unfinished = [run.path for run in runs if score == "evaluation" and "eval/episodic_return" not in run.scalars]
    if unfinished:  # all named at once: in a sweep still running there can be many
        raise SweepError(f"{len(unfinished)} of {len(runs)} runs have no final evaluation yet "
                         f"(eval/episodic_return): {', '.join(map(str, unfinished))}; pass only finished runs, or "
                         "score by training returns")
    groups: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[f"{run.arm}, RR {run.replay_ratio:g}"][run.env_id].append(run)
    return {algorithm: np.array([[human_normalized(run_score(run, fraction, score), env_id)
                                  for env_id, run in zip(games, members)]
                                 for members in zip(*[sorted(by_game[g], key=lambda r: r.path)[:n_runs]
                                                      for g in games])])[..., None]
            for algorithm, by_game in sorted(groups.items())}


def sweep_arrays(runs: list[Run], tag: str, bins: int, normalize: bool) -> tuple[dict, list[str], np.ndarray, dict]:
    """Per algorithm (arm and replay ratio): an array (runs, games, bins) of the tag's values binned over agent
    steps, human-normalized if asked. Every algorithm gets the same games and, per game, the same number of
    runs (the smallest any cell has: rliable needs a full matrix); the points are fractions of the shortest run."""
    groups: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[f"{run.arm}, RR {run.replay_ratio:g}"][run.env_id].append(run)
    games = sorted({run.env_id for run in runs})
    n_runs = min(len(groups[a].get(g, [])) for a in groups for g in games)
    if n_runs == 0:
        missing = [f"{g} ({a})" for a in sorted(groups) for g in games if not groups[a].get(g)]
        raise SweepError("every arm and replay ratio needs at least one run of every game; none of "
                         f"{', '.join(missing)}: pass only the games every arm has run (their cell folders), or wait "
                         "for the missing runs")
    last_step = min(int(run.scalars[tag][0].max()) for run in runs if tag in run.scalars)
    edges = np.linspace(0, last_step + 1, bins + 1)
    arrays, counts = {}, {}
    for algorithm, by_game in sorted(groups.items()):
        per_game = []
        for env_id in games:
            members = sorted(by_game[env_id], key=lambda run: run.path)[:n_runs]
            values = np.stack([carried_forward(binned(run, tag, edges)) for run in members])  # (runs, bins)
            per_game.append(human_normalized(values, env_id) if normalize else values)
        arrays[algorithm] = np.stack(per_game, axis=1)  # (runs, games, bins)
        counts[algorithm] = {env_id: len(by_game[env_id]) for env_id in games}
    return arrays, games, (edges[:-1] + edges[1:]) / 2, counts


def interval_estimates(arrays: dict[str, np.ndarray], reps: int) -> tuple[dict, dict]:
    """IQM and mean over runs and games, with 95 % stratified bootstrap intervals (rliable), per point."""
    from rliable import library as rly
    from rliable import metrics

    def iqm_and_mean(scores: np.ndarray) -> np.ndarray:  # scores: (runs, games, points) -> (2 * points,)
        points = range(scores.shape[-1])
        return np.array([metrics.aggregate_iqm(scores[..., t]) for t in points]
                        + [metrics.aggregate_mean(scores[..., t]) for t in points])

    estimates, intervals = rly.get_interval_estimates(arrays, iqm_and_mean, reps=reps,
                                                      random_state=np.random.RandomState(0))
    # -> per algorithm: (points, 2) estimates [IQM, mean], and (2, points, 2) intervals [low/high, point, statistic]
    return ({a: e.reshape(2, -1).T for a, e in estimates.items()},
            {a: i.reshape(2, 2, -1).transpose(0, 2, 1) for a, i in intervals.items()})


def interval(low: float, high: float, single: bool) -> str:
    return "(no interval: 1 run per game)" if single else f"[{low:.3f}, {high:.3f}]"


def sweep_report(runs: list[Run], args: Args) -> str:
    """Figures of IQM (human-normalized return; dormant fraction) over training per algorithm, and the tables."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    lines = []
    for tag, normalize, label, file_name in [
        ("charts/episodic_return", True, "human-normalized return", "sweep_return"),
        ("dormant/tau=0.1/total", False, "dormant neurons at tau = 0.1, fraction", "sweep_dormant"),
    ]:
        lacking = [os.path.relpath(run.path) for run in runs if tag not in run.scalars]
        if lacking:  # e.g. runs that have not finished a game yet: rliable needs every run
            lines.append(f"not drawn: {label} ({tag}), which {len(lacking)} of {len(runs)} runs have not logged yet: "
                         + ", ".join(lacking))
            continue
        arrays, games, steps, counts = sweep_arrays(runs, tag, args.bins, normalize)
        points, intervals = interval_estimates(arrays, args.bootstrap_samples)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for k, algorithm in enumerate(sorted(arrays)):
            for ax, which, name in zip(axes, (0, 1), ("IQM", "mean")):
                center, low, high = points[algorithm][:, which], intervals[algorithm][0][:, which], \
                    intervals[algorithm][1][:, which]
                ok = ~np.isnan(center)
                ax.plot(steps[ok], center[ok], label=algorithm, color=f"C{k}")
                ax.fill_between(steps[ok], low[ok], high[ok], color=f"C{k}", alpha=0.2, linewidth=0)
                ax.set_title(f"{name} over {len(games)} games x {arrays[algorithm].shape[0]} runs", fontsize=10)
                ax.set_xlabel("agent steps (4 frames each)")
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        single = next(iter(arrays.values())).shape[0] == 1  # rliable resamples runs within a game: none to resample
        fig.suptitle(f"{label}: " + ("one run per game, so no confidence interval" if single else
                                     "95 % stratified bootstrap CIs (rliable)")
                     + (f"\n{args.note}" if args.note else ""), fontsize=10)
        fig.tight_layout()
        os.makedirs(args.out_dir, exist_ok=True)
        path = os.path.join(args.out_dir, f"{args.prefix}{file_name}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        lines.append(f"wrote {path}")
        if tag == "charts/episodic_return":
            final = final_scores(runs, games, next(iter(arrays.values())).shape[0], args.final_fraction, args.score)
            scored_by = ("the mean return of its final evaluation" if args.score == "evaluation" else
                         f"its mean training return over the last {args.final_fraction:.0%} of its agent steps")
            lines += ["", f"A run's score: {scored_by}."]
            final_points, final_intervals = interval_estimates(final, args.bootstrap_samples)
            lines += ["", "| algorithm | runs per game | IQM HNS [95 % CI] | mean HNS [95 % CI] |", "|-|-|-|-|"]
            for algorithm in sorted(final):
                (iqm_value, mean_value), (low, high) = final_points[algorithm][0], final_intervals[algorithm]
                lines.append(f"| {algorithm} | {final[algorithm].shape[0]} | {iqm_value:.3f} "
                             f"{interval(low[0, 0], high[0, 0], single)} | {mean_value:.3f} "
                             f"{interval(low[0, 1], high[0, 1], single)} |")
            scores = final[algorithm].size  # the same for every algorithm
            if single:
                lines += ["", "One run per game: the stratified bootstrap resamples runs within each game, so with "
                          "one it has nothing to resample; the seed-to-seed spread is unmeasured, and no interval is "
                          "given."]
            if scores < 4:
                lines += ["", f"With {scores} score{'s' * (scores > 1)} in all, the IQM (which drops the lowest and "
                          "highest quarter, rounded down) drops none: here it is the mean."]
            capped = args.score == "evaluation"  # stalled games count as they end: say how many there were
            scored = "final evaluation" if capped else f"return, last {args.final_fraction:.0%}"
            lines += ["", f"| game | algorithm | runs | {scored}: mean (per run) | HNS |"
                      + (" evaluation games cut by the cap (per run) |" if capped else ""),
                      "|-|-|-|-|-|" + ("-|" if capped else "")]
            n_runs = next(iter(final.values())).shape[0]
            for g, env_id in enumerate(games):
                for algorithm in sorted(final):
                    normalized = final[algorithm][:, g, 0]
                    random_score, human_score = ATARI_RANDOM_HUMAN[game_name(env_id)]
                    raw = normalized * (human_score - random_score) + random_score
                    members = sorted((run for run in runs if run.env_id == env_id
                                      and f"{run.arm}, RR {run.replay_ratio:g}" == algorithm), key=lambda r: r.path)
                    lines.append(f"| {env_id} | {algorithm} | {counts[algorithm][env_id]} | {raw.mean():.1f} "
                                 f"({', '.join(f'{x:.0f}' for x in raw)}) | {normalized.mean():.3f} |"
                                 + (f" {', '.join(games_at_cap(run) for run in members[:n_runs])} |" if capped else ""))
    return "\n".join(lines)


def main(args: Args) -> None:
    for name, value in (("--max-steps", args.max_steps), ("--windows", args.windows)):
        if value is not None and value < 1:
            print(f"error: {name} must be a positive number of agent steps, not {value}", file=sys.stderr)
            sys.exit(2)
    for name, value in (("--bins", args.bins), ("--bootstrap-samples", args.bootstrap_samples)):
        if value < 1:
            print(f"error: {name} must be at least 1, not {value}", file=sys.stderr)
            sys.exit(2)
    if not 0 < args.final_fraction <= 1:
        print(f"error: --final-fraction must be in (0, 1], a fraction of each run's agent steps, not "
              f"{args.final_fraction}", file=sys.stderr)
        sys.exit(2)
    run_dirs = find_run_dirs(args.paths)
    if not run_dirs:
        print(f"error: no TensorBoard event files under {', '.join(args.paths)}; train with dqn_redo.py first "
              "or give the folders of your runs", file=sys.stderr)
        sys.exit(2)
    runs = [run for run in map(load_run, run_dirs) if run is not None]
    if not runs:
        print(f"error: none of the {len(run_dirs)} run folders found has dqn_redo.py hyperparameters", file=sys.stderr)
        sys.exit(2)
    if args.max_steps is not None:
        runs = [truncated(run, args.max_steps) for run in runs]
        runs = [run for run in runs if run.scalars]
    if args.sweep:
        try:
            print(sweep_report(runs, args))
        except SweepError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        return
    os.makedirs(args.out_dir, exist_ok=True)
    from matplotlib import pyplot as plt

    for name, fig in make_figures(runs, args).items():
        path = os.path.join(args.out_dir, f"{name}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(f"wrote {path}")
    print(summary_table(runs))
    for tag in args.window_tags if args.windows else []:
        print()
        print(window_table(runs, tag, args.windows))


def final_value(run: Run, tag: str, fraction: float = 0.1) -> float:
    """Mean of the values logged in the last `fraction` of the run's agent steps (NaN if none was)."""
    if tag not in run.scalars:
        return float("nan")
    steps, values = run.scalars[tag]
    window = values[steps >= (1 - fraction) * run.last_step]
    return float(window.mean()) if len(window) else float("nan")


def window_table(runs: list[Run], tag: str, width: int) -> str:
    """A markdown table of each group's mean of `tag` within windows of `width` agent steps: the mean over the
    group's runs of each run's mean in the window ("-" where none logged it). Episodic returns also count the games
    that ended in the window, over all the group's runs; dormant shares are in %; other values under 10 have three
    significant digits."""
    groups = sorted({run.group for run in runs if tag in run.scalars})
    if not groups:
        return f"{tag}: not logged by these runs"
    members = {group: [run for run in runs if run.group == group and tag in run.scalars] for group in groups}
    edges = np.arange(0, max(run.last_step for run in runs) + width, width)
    scale = 100 if tag.startswith("dormant/") else 1
    lines = [f"| {tag}, agent steps | " + " | ".join(group_label(members[group]) for group in groups) + " |",
             "|-|" + "-|" * len(groups)]
    means = {group: np.stack([binned(run, tag, edges) for run in members[group]]) for group in groups}
    games = {group: sum(np.histogram(run.scalars[tag][0], edges)[0] for run in members[group]).tolist()
             for group in groups}
    for k in range(len(edges) - 1):
        cells = []
        for group in groups:
            values = means[group][:, k]
            if np.isnan(values).all():
                cells.append("-")
                continue
            value = scale * np.nanmean(values)
            if tag == "charts/episodic_return":
                cell = f"{value:,.0f} ({games[group][k]} game{'s' * (games[group][k] != 1)})"
            else:  # three significant digits for small values (a TD loss of 0.03 would read 0.0)
                cell = f"{value:,.1f}" if abs(value) >= 10 or scale == 100 else f"{value:.3g}"
            cells.append(cell)
        lines.append(f"| {edges[k]:,}-{edges[k + 1]:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(runs: list[Run]) -> str:
    """A markdown table: per group, each seed's end-of-run values, then their mean."""
    lines = ["Windows: the last 10 % of each run's agent steps. Final evaluation: mean return over the run's "
             "evaluation games (- if none), and per run how many of them the episode cap cut (? if its evaluation.json "
             "predates the count).", "",
             "| game | agent | runs | agent steps | return, last 10 % | final evaluation | evaluation games cut by the "
             "cap | dormant % tau=0 (last 10 %) | dormant % tau=0.1 (last 10 %) | of those at a check, % dormant "
             "again at the next (last 10 %) |", "|-|-|-|-|-|-|-|-|-|-|"]
    for group in sorted({run.group for run in runs}):
        members = [run for run in runs if run.group == group]
        last_steps = [run.last_step for run in members]
        returns = [final_value(run, "charts/episodic_return") for run in members]
        dormant = {tau: [100 * final_value(run, f"dormant/tau={tau}/total") for run in members] for tau in ("0", "0.1")}
        again = [100 * final_value(run, "dormant/again/total") for run in members]
        evaluation = [run.scalars["eval/episodic_return"][1].mean() for run in members
                      if "eval/episodic_return" in run.scalars]
        show = lambda xs, digits: (f"{np.nanmean(xs):.{digits}f} ({', '.join(f'{x:.{digits}f}' for x in xs)})"
                                   if not np.isnan(xs).all() else "-")
        lines.append(f"| {group[0]} | {group_label(members)} | {len(members)} | "
                     f"{', '.join(f'{s:,}' for s in sorted(set(last_steps)))} | {show(returns, 0)} | "
                     f"{show(evaluation, 0)} | {', '.join(map(games_at_cap, members))} | {show(dormant['0'], 1)} | "
                     f"{show(dormant['0.1'], 1)} | {show(again, 1)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
