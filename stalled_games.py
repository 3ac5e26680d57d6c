"""Replay a finished run's final evaluation from its checkpoint and look at the first game the episode cap cut.

    python stalled_games.py runs/<run>/checkpoint.pt --out img/drq_DemonAttack-v4_stalled_game.png

Plays the games as ``dqn_redo.evaluate`` does (its seeds, epsilon and network), checks each return against the run's
evaluation.json, and stops at the first game cut by --max-episode-steps: prints when it last scored and lost a
life and how often it chose each action, and draws three of its screens with how they were made.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro

from dqn_redo import EVALUATED, Args, QNetwork, act, hardware, load_checkpoint, make_env


@dataclass
class Options:
    checkpoint: tyro.conf.Positional[str]
    """a finished run's checkpoint.pt (or its folder)"""
    out: str = "figures/stalled_game.png"
    """where the screens go"""
    screens: list[int] = field(default_factory=lambda: [1_000, 5_000, 26_000])
    """agent steps of the stalled game whose screens are drawn"""


def main(options: Options) -> None:
    checkpoint, error = load_checkpoint(options.checkpoint)
    if error:
        print(f"error: {error.replace('--resume takes', 'pass')}", file=sys.stderr)
        sys.exit(2)
    args = Args(**checkpoint["args"])
    recorded, recorded_path = None, os.path.join(checkpoint["run_dir"], EVALUATED)
    if os.path.isfile(recorded_path):
        with open(recorded_path) as file:
            recorded = json.load(file)["returns"]
    env = make_env(args, evaluation=True)
    q_network = QNetwork(env.action_space.n, args.network, args.dueling)
    q_network.load_state_dict(checkpoint["q_network"])
    device, rng = torch.device("cpu"), np.random.default_rng(args.seed + 1)  # evaluate()'s seeds
    obs, _ = env.reset(seed=args.seed + 1)
    for game in range(1, args.eval_episodes + 1):
        actions, lives, scored, screens, done = [], [env.unwrapped.ale.lives()], [], {}, False
        while not done:
            actions.append(act(q_network, obs, args.eval_epsilon, rng, device))
            obs, reward, terminated, truncated, info = env.step(actions[-1])
            lives.append(env.unwrapped.ale.lives())
            scored += [len(actions)] if reward else []
            if len(actions) in options.screens:
                screens[len(actions)] = env.unwrapped.ale.getScreenRGB()
            done = terminated or truncated
        game_return = float(info["episode"]["r"])
        if recorded is not None and recorded[game - 1] != game_return:
            sys.exit(f"error: game {game} returned {game_return:g} here but {recorded[game - 1]:g} in {recorded_path}:"
                     " this replay is not the run's evaluation (another torch or ale-py version?)")
        print(f"game {game}: return {game_return:g} in {len(actions):,} steps{' (the cap)' if truncated else ''}")
        if truncated:
            break
        obs, _ = env.reset()
    else:
        print(f"none of the {args.eval_episodes} games reached the cap")
        return
    lost = [step for step in range(1, len(lives)) if lives[step] < lives[step - 1]]
    last_points = scored[-1] if scored else 0
    names = env.unwrapped.get_action_meanings()
    counts = collections.Counter(actions[last_points:])  # the stall: after the game's last points
    shares = ", ".join(f"{names[a]} {n / sum(counts.values()):.0%}" for a, n in counts.most_common())
    summary = f"lives lost at steps {lost}, last points at step {last_points:,}; actions after them: {shares}"
    print(summary)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(screens), figsize=(3 * len(screens), 4.6), squeeze=False)
    for ax, (step, screen) in zip(axes[0], sorted(screens.items())):
        ax.imshow(screen)
        ax.set_title(f"step {step:,}", fontsize=9)
        ax.axis("off")
    run = os.path.basename(os.path.normpath(checkpoint["run_dir"]))
    fig.suptitle(f"{args.env_id}, evaluation game {game}: {game_return:g} points, cut by the cap at {len(actions):,} "
                 f"steps\n{summary}", fontsize=8)
    fig.text(0.01, 0.01, f"{run}, checkpoint at step {checkpoint['global_step']:,}, evaluation epsilon "
             f"{args.eval_epsilon:g}\nmade by stalled_games.py on {hardware(device)}", fontsize=6.5, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    os.makedirs(os.path.dirname(options.out) or ".", exist_ok=True)
    fig.savefig(options.out, dpi=110)
    print(f"screens of steps {', '.join(f'{step:,}' for step in sorted(screens))} in {options.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(tyro.cli(Options))
