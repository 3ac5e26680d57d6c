"""Replay a finished run's final evaluation from its checkpoint and look at the first game the episode cap cut.

    python stalled_games.py runs/<run>/checkpoint.pt --out img/drq_DemonAttack-v4_stalled_game.png

Plays the games with ``dqn_redo.evaluate`` itself (so with its seeds, epsilon and network), checks each return against
the run's evaluation.json, and stops at the first game cut by --max-episode-steps: prints when it last scored and lost a
life and how often it chose each action, and draws three of its screens with how they were made.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from dataclasses import dataclass, field

import torch
import tyro

from dqn_redo import EVALUATED, Args, QNetwork, evaluate, hardware, load_checkpoint, make_env


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
    if not all(1 <= step <= args.max_episode_steps for step in options.screens):
        print(f"error: --screens takes agent steps from 1 to the run's cap, {args.max_episode_steps:,}; "
              f"got {options.screens}", file=sys.stderr)
        sys.exit(2)
    names = make_env(args, evaluation=True).unwrapped.get_action_meanings()
    q_network = QNetwork(len(names), args.network, args.dueling)
    q_network.load_state_dict(checkpoint["q_network"])
    game = {"over": True}  # the game being played, recorded step by step

    def record(env, action: int, reward: float, terminated: bool, truncated: bool) -> bool:
        if game["over"]:
            game.update(actions=[], lives=[env.unwrapped.ale.lives()], scored=[], screens={})
        game["actions"].append(action)
        game["lives"].append(env.unwrapped.ale.lives())
        game["scored"] += [len(game["actions"])] if reward else []
        if len(game["actions"]) in options.screens:
            game["screens"][len(game["actions"])] = env.unwrapped.ale.getScreenRGB()
        game["over"] = terminated or truncated
        return truncated  # the first game cut by the cap ends the replay

    device = torch.device("cpu")
    returns, lengths, at_cap = evaluate(q_network, args, device, on_step=record)
    recorded_path = os.path.join(checkpoint["run_dir"], EVALUATED)
    if os.path.isfile(recorded_path):
        with open(recorded_path) as file:
            recorded = json.load(file)["returns"][:len(returns)]
        if recorded != returns:
            game_number = next(i for i, (a, b) in enumerate(zip(returns, recorded), 1) if a != b)
            sys.exit(f"error: game {game_number} returned {returns[game_number - 1]:g} here but "
                     f"{recorded[game_number - 1]:g} in {recorded_path}: this replay is not the run's evaluation "
                     "(another torch or ale-py version?)")
    if not any(at_cap):
        print(f"none of the {args.eval_episodes} games reached the cap")
        return
    actions, lives, scored, screens = game["actions"], game["lives"], game["scored"], game["screens"]
    game_number, game_return = len(returns), returns[-1]
    print(f"game {game_number}: return {game_return:g} in {lengths[-1]:,} steps (the cap)")
    lost = [step for step in range(1, len(lives)) if lives[step] < lives[step - 1]]
    last_points = scored[-1] if scored else 0
    counts = collections.Counter(actions[last_points:])  # the stall: after the game's last points
    shares = ", ".join(f"{names[a]} {n / sum(counts.values()):.0%}" for a, n in counts.most_common())
    summary = f"lives lost at steps {lost}, last points at step {last_points:,}; actions after them: {shares}"
    print(summary)

    if not screens:
        print(f"no figure: none of the --screens steps {options.screens} falls in this game's {lengths[-1]:,} steps")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(screens), figsize=(3 * len(screens), 4.6), squeeze=False)
    for ax, (step, screen) in zip(axes[0], sorted(screens.items())):
        ax.imshow(screen)
        ax.set_title(f"step {step:,}", fontsize=9)
        ax.axis("off")
    run = os.path.basename(os.path.normpath(checkpoint["run_dir"]))
    fig.suptitle(f"{args.env_id}, evaluation game {game_number}: {game_return:g} points, cut by the cap at "
                 f"{lengths[-1]:,} steps\n{summary}", fontsize=8)
    fig.text(0.01, 0.01, f"{run}, checkpoint at step {checkpoint['global_step']:,}, evaluation epsilon "
             f"{args.eval_epsilon:g}\nmade by stalled_games.py on {hardware(device)}", fontsize=6.5, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    os.makedirs(os.path.dirname(options.out) or ".", exist_ok=True)
    fig.savefig(options.out, dpi=110)
    print(f"screens of steps {', '.join(f'{step:,}' for step in sorted(screens))} in {options.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(tyro.cli(Options))
