"""Dormant neurons of freshly initialized networks on real Atari states, as a training run first logs them.

    python dormant_at_init.py --env-id DemonAttack-v4 --seeds 1 2 3 4 5

Plays the warm-up exactly as dqn_redo.py does (epsilon 1, the default protocol), stores it in the
same replay, samples --redo-batch-size states uniformly, and scores each network at initialization
for every seed. Prints the mean over seeds (min-max in brackets) per layer and in total.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro

from dqn_redo import DORMANT_TAUS, Args, FrameReplayBuffer, QNetwork, env_id_error, make_env
from redo import dormant_fractions, dormant_scores


@dataclass
class Options:
    env_id: str = "DemonAttack-v4"
    """Atari id, played with dqn_redo.py's default protocol"""
    warmup_steps: int = 20_000
    """random agent steps stored in the replay before scoring (dqn_redo.py's --learning-starts)"""
    redo_batch_size: int = 256
    """states scored"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """one network per seed and architecture"""


def main(options: Options) -> None:
    error = env_id_error(options.env_id)
    if error is None and not 1 <= options.redo_batch_size <= options.warmup_steps:
        error = (f"--redo-batch-size must be from 1 to --warmup-steps ({options.warmup_steps:,}), "
                 f"not {options.redo_batch_size}")
    if error is None and not options.seeds:
        error = "--seeds needs at least one seed"
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    args = Args(env_id=options.env_id)
    env, rng = make_env(args), np.random.default_rng(0)
    replay = FrameReplayBuffer(options.warmup_steps + 1000, 4, (84, 84), torch.device("cpu"), rng)
    obs, _ = env.reset(seed=0)
    for _ in range(options.warmup_steps):
        action = int(rng.integers(env.action_space.n))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, action, float(np.clip(reward, -1, 1)), next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    states = replay.sample(options.redo_batch_size).obs
    print(f"{options.env_id}: {options.redo_batch_size} states from {options.warmup_steps:,} random agent steps; "
          f"networks at initialization, seeds {options.seeds}")
    for network in ("dopamine", "nature"):
        per_tau = {tau: [] for tau in DORMANT_TAUS}
        for seed in options.seeds:
            torch.manual_seed(seed)
            scores = dormant_scores(QNetwork(env.action_space.n, network), states)
            for tau in DORMANT_TAUS:
                per_tau[tau].append(dormant_fractions(scores, tau))
        print(f"\n{network}: dormant %, mean over seeds [min-max]")
        names = list(per_tau[DORMANT_TAUS[0]][0])
        print("| tau | " + " | ".join(names) + " |\n|-|" + "-|" * len(names))
        for tau, runs in per_tau.items():
            cells = []
            for name in names:
                values = 100 * np.array([run[name] for run in runs])
                cells.append(f"{values.mean():.1f} [{values.min():.1f}-{values.max():.1f}]")
            print(f"| {tau:g} | " + " | ".join(cells) + " |")
    env.close()


if __name__ == "__main__":
    main(tyro.cli(Options))
