"""Replay a finished run's final evaluation from its checkpoint and look at the games the episode cap cut.

    python stalled_games.py runs/<run>/checkpoint.pt --out img/drq_DemonAttack-v4_stalled_game.png

Plays the games with ``dqn_redo.evaluate`` itself (so with its seeds, epsilon and network), checks each return against
the run's evaluation.json, and stops at the first game cut by --max-episode-steps (with --every-game, goes on to the
end): prints, for each such game, when it last scored and lost a life, its largest one-step reward (a jump of the
score that play cannot make shows there: in Pong, the console's end of a game that outlasts its clock) and how often it
chose each action, and draws three screens of the first with how they were made.
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
    every_game: bool = False
    """go on after the first game the cap cut, through the whole evaluation, and summarize each such game"""


def summarize(game: dict, action_names: list[str]) -> str:
    """When the game last lost a life and scored, its largest one-step reward, and its actions after the last points
    (the stall)."""
    lost = [step for step in range(1, len(game["lives"])) if game["lives"][step] < game["lives"][step - 1]]
    last_points = game["rewards"][-1][1] if game["rewards"] else 0
    largest = max(game["rewards"], key=lambda reward_step: abs(reward_step[0]), default=None)
    counts = collections.Counter(game["actions"][last_points:])
    shares = ", ".join(f"{action_names[a]} {n / sum(counts.values()):.0%}" for a, n in counts.most_common())
    return (f"lives lost at steps {lost}, last points at step {last_points:,}"
            + (f" (largest one-step reward {largest[0]:+g}, at step {largest[1]:,})" if largest else "")
            + f"; actions after them: {shares}")


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
    game: dict = {"over": True, "number": 0}  # the game being played, recorded step by step
    cut: list[dict] = []  # the games the cap cut, in order

    def record(env, action: int, reward: float, terminated: bool, truncated: bool) -> bool:
        if game["over"]:
            game.update(number=game["number"] + 1, actions=[], lives=[env.unwrapped.ale.lives()], rewards=[],
                        screens={})
        game["actions"].append(action)
        game["lives"].append(env.unwrapped.ale.lives())
        game["rewards"] += [(reward, len(game["actions"]))] if reward else []
        if len(game["actions"]) in options.screens and not cut:
            game["screens"][len(game["actions"])] = env.unwrapped.ale.getScreenRGB()
        game["over"] = terminated or truncated
        if truncated:
            cut.append(dict(game))
        return truncated and not options.every_game  # the first game cut by the cap ends the replay, unless asked

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
    for stalled in cut:
        print(f"game {stalled['number']}: return {returns[stalled['number'] - 1]:g} in "
              f"{lengths[stalled['number'] - 1]:,} steps (the cap)")
        print(summarize(stalled, names))
    first = cut[0]
    if not first["screens"]:
        print(f"no figure: none of the --screens steps {options.screens} falls in game {first['number']}'s "
              f"{lengths[first['number'] - 1]:,} steps")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    screens = first["screens"]
    fig, axes = plt.subplots(1, len(screens), figsize=(3 * len(screens), 4.6), squeeze=False)
    for ax, (step, screen) in zip(axes[0], sorted(screens.items())):
        ax.imshow(screen)
        ax.set_title(f"step {step:,}", fontsize=9)
        ax.axis("off")
    run = os.path.basename(os.path.normpath(checkpoint["run_dir"]))
    fig.suptitle(f"{args.env_id}, evaluation game {first['number']}: {returns[first['number'] - 1]:g} points, cut by "
                 f"the cap at {lengths[first['number'] - 1]:,} steps\n{summarize(first, names)}", fontsize=8)
    fig.text(0.01, 0.01, f"{run}, checkpoint at step {checkpoint['global_step']:,}, evaluation epsilon "
             f"{args.eval_epsilon:g}\nmade by stalled_games.py on {hardware(device)}", fontsize=6.5, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    os.makedirs(os.path.dirname(options.out) or ".", exist_ok=True)
    fig.savefig(options.out, dpi=110)
    print(f"screens of steps {', '.join(f'{step:,}' for step in sorted(screens))} in {options.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(tyro.cli(Options))
