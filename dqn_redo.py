"""DQN with ReDo (recycling dormant neurons) on Atari, in the style of CleanRL's dqn_atari.py.

    python dqn_redo.py --env-id DemonAttack-v4 --enable-redo
    tensorboard --logdir runs

Defaults follow the paper's DQN (Dopamine's code, see the README's table): its network (SAME padding,
Xavier-uniform weights, zero biases), Adam 6.25e-5 / eps 1.5e-4, Huber loss on the plain max target,
batch 32, 1M replay, 20k warm-up steps at epsilon 1, then epsilon -> 0.01 over 250k agent steps, hard
target sync every 8000 agent steps, replay ratio 0.25; sticky actions 0.25, 4 frames per agent step,
full-game episodes capped at 27,000 agent steps. CleanRL's Atari stack for comparisons:

    python dqn_redo.py --env-id BreakoutNoFrameskip-v4 --network nature --sticky-actions 0 \
        --terminal-on-life-loss --noop-max 30 --fire-reset --no-epsilon-after-warmup
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import math
import os
import pickle
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Literal, NamedTuple

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from stable_baselines3.common.atari_wrappers import EpisodicLifeEnv, FireResetEnv, MaxAndSkipEnv, NoopResetEnv

from redo import dormant_fractions, dormant_scores, recycle_dormant

gym.register_envs(ale_py)

DORMANT_TAUS = (0.0, 0.025, 0.1)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run folder's name)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch, the environment and the replay sampling"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """use the GPU when there is one (otherwise the CPU)"""
    compile: bool = True
    """compile the TD loss and its backward with torch.compile; falls back to eager if compiling fails"""
    channels_last: bool = True
    """keep conv weights and activations in channels_last memory format (faster convolutions)"""
    fused_adam: bool = True
    """use torch's fused Adam: the same update rule, one kernel for all parameters"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default); use 1 per process when running several at once"""
    env_id: str = "DemonAttack-v4"
    """Atari id (`DemonAttack-v4`, `DemonAttackNoFrameskip-v4`, `ALE/DemonAttack-v5`: the same game here, since the flags below set frame skip, stickiness and the episode cap for every id)"""
    network: Literal["dopamine", "nature"] = "dopamine"
    """`dopamine`: the paper's network (Dopamine's Flax Nature CNN: SAME padding, 7,744 inputs to fc1, Xavier-uniform weights, zero biases); `nature`: the Nature/CleanRL network (VALID padding, 3,136 inputs, PyTorch's default init)"""
    sticky_actions: float = 0.25
    """probability that the emulator repeats the previous action at each frame (Machado et al. 2018; 0: none)"""
    terminal_on_life_loss: bool = False
    """end the learning episode (no bootstrap) when a life is lost; the game itself goes on (CleanRL)"""
    noop_max: int = 0
    """up to this many no-op actions at each reset (CleanRL: 30; the paper: 0)"""
    fire_reset: bool = False
    """press FIRE after each reset in games that need it (CleanRL)"""
    max_episode_steps: int = 27_000
    """agent steps after which an episode is truncated (bootstrapped): 27,000 is 108,000 frames, 30 minutes of play"""
    total_timesteps: int = 2_500_000
    """agent steps to train for (4 frames each: 2.5M steps are the paper's 10M frames)"""
    learning_rate: float = 6.25e-5
    """Adam learning rate"""
    adam_eps: float = 1.5e-4
    """Adam epsilon"""
    buffer_size: int = 1_000_000
    """replay capacity in transitions (about 7.1 KB each: single frames are stored)"""
    gamma: float = 0.99
    """discount factor"""
    target_network_frequency: int = 8000
    """agent steps between hard copies of the Q-network into the target network"""
    batch_size: int = 32
    """transitions per gradient step"""
    start_e: float = 1.0
    """initial exploration epsilon"""
    end_e: float = 0.01
    """final exploration epsilon"""
    epsilon_decay_steps: int = 250_000
    """agent steps over which epsilon decays linearly from start-e to end-e"""
    epsilon_after_warmup: bool = True
    """hold epsilon at start-e through the warm-up and decay it afterwards (Dopamine); off: decay from step 0 (CleanRL)"""
    learning_starts: int = 20_000
    """agent steps of warm-up (random actions from epsilon, no training)"""
    replay_ratio: float = 0.25
    """gradient steps per agent step after warm-up: 0.25 is one every 4 steps, 2 is two per step"""
    enable_redo: bool = False
    """recycle dormant neurons (dormant fractions are logged either way)"""
    redo_tau: float = 0.1
    """dormancy threshold: a neuron with score <= tau is recycled"""
    redo_interval: int = 1000
    """gradient steps between dormant-neuron checks (logging, and recycling with --enable-redo)"""
    redo_batch_size: int = 256
    """states sampled uniformly from the replay to score neurons (the authors' code: 256; the paper's text: 64)"""
    log_interval: int = 100
    """gradient steps between logs of the losses and SPS"""
    save_model: bool = False
    """save the Q-network and args into the run folder, then evaluate it"""
    eval_episodes: int = 10
    """full-game episodes of the evaluation after --save-model"""
    eval_epsilon: float = 0.001
    """epsilon of the evaluation"""
    checkpoint_interval: int = 100_000
    """agent steps between checkpoints (runs/<run>/checkpoint.pt), plus one at the end so the run can be extended; 0: only on Ctrl-C/SIGTERM"""
    checkpoint_buffer: bool = False
    """also save the replay buffer in checkpoints (about 7.1 KB per transition: 7 GB at 1M); then a resumed run is identical to an uninterrupted one"""
    resume: str | None = None
    """a run folder or checkpoint file to continue; its saved arguments are the defaults, and only --total-timesteps, logging, checkpointing, evaluation and speed options may change"""


CHANGEABLE_ON_RESUME = {"total_timesteps", "log_interval", "checkpoint_interval", "checkpoint_buffer", "save_model",
                        "eval_episodes", "eval_epsilon", "cuda", "compile", "channels_last", "fused_adam", "torch_threads",
                        "resume", "exp_name"}


# ---------------------------------------------------------------------------------------------------
# Environment


def make_env(args: Args, evaluation: bool = False) -> gym.Env:
    """The Atari stack of ``args``, with exactly 4 emulator frames per agent step for every id.

    The defaults are Dopamine's (``atari_lib.create_atari_environment``): sticky actions 0.25, a max
    over the last two of the 4 frames, full-game episodes, no no-op or FIRE resets, 84x84 greyscale
    (area interpolation), 4 stacked frames, at most 27,000 agent steps. ``evaluation`` plays full games.
    """
    # frameskip=1 overrides the id's own skipping (v4: 2-4 frames at random, v5: 4), so that
    # MaxAndSkipEnv's 4 is the only one. The ALE applies stickiness at every emulator frame, as in Dopamine.
    env = gym.make(args.env_id, frameskip=1, obs_type="grayscale", repeat_action_probability=args.sticky_actions,
                   max_num_frames_per_episode=4 * args.max_episode_steps)
    env = gym.wrappers.RecordEpisodeStatistics(env)  # innermost: real, unclipped, full-game returns
    if args.noop_max > 0:
        env = NoopResetEnv(env, noop_max=args.noop_max)
    env = MaxAndSkipEnv(env, skip=4)
    if args.terminal_on_life_loss and not evaluation:
        env = EpisodicLifeEnv(env)
    if args.fire_reset and "FIRE" in env.unwrapped.get_action_meanings():
        env = FireResetEnv(env)
    env = gym.wrappers.ResizeObservation(env, (84, 84))
    return gym.wrappers.FrameStackObservation(env, 4)  # pads a new episode with its first frame


# ---------------------------------------------------------------------------------------------------
# Replay


class Batch(NamedTuple):
    obs: torch.Tensor  # uint8 (B, 4, 84, 84)
    actions: torch.Tensor  # int64 (B,)
    rewards: torch.Tensor  # float32 (B,)
    next_obs: torch.Tensor  # uint8 (B, 4, 84, 84)
    terminated: torch.Tensor  # float32 (B,): 1 = no bootstrap; truncation bootstraps


class FrameReplayBuffer:
    """Replay that stores each frame once and rebuilds the frame stacks when sampling.

    Slot ``s`` of a ring holds one frame and the transition whose observation ends with that frame;
    its next observation ends with the frame in slot ``s + 1``. ``offset[s]`` counts the frames of
    the episode before slot ``s`` (capped at 3): a stack never reaches into another episode and
    repeats the episode's first frame instead, as the environment's stack does after a reset (a first
    observation that is not padded that way gets a slot per frame). An episode's final frame gets a
    slot of its own with no transition, so a truncated transition bootstraps from the real final
    observation. About 7.07 KB per slot.
    """

    SLOT_BYTES = 84 * 84 + 4 + 4 + 1 + 1 + 1  # frame, action, reward, terminated, has_transition, offset
    _ARRAYS = ("frames", "actions", "rewards", "terminated", "has_transition", "offset")

    def __init__(self, capacity: int, stack: int, frame_shape: tuple[int, int], device: torch.device, rng: np.random.Generator):
        self.capacity, self.stack, self.device, self.rng = capacity, stack, device, rng
        self.frames = np.zeros((capacity, *frame_shape), dtype=np.uint8)
        self.actions = np.zeros(capacity, dtype=np.int32)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.bool_)
        self.has_transition = np.zeros(capacity, dtype=np.bool_)
        self.offset = np.zeros(capacity, dtype=np.uint8)
        for name in self._ARRAYS:
            getattr(self, name).fill(0)  # touch every page now: a buffer too big for the machine fails here, not hours later
        self.head = 0  # next slot to write
        self.slots_written = 0
        self.current = 0  # slot of the newest frame, whose transition is not complete yet
        self.episode_open = False

    @staticmethod
    def bytes_needed(capacity: int) -> int:
        return capacity * FrameReplayBuffer.SLOT_BYTES

    def _write_frame(self, frame: np.ndarray, offset: int) -> int:
        slot = self.head
        self.frames[slot] = frame
        self.offset[slot] = offset
        self.has_transition[slot] = False
        self.head = (slot + 1) % self.capacity
        self.slots_written += 1
        return slot

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool, truncated: bool) -> None:
        """Stores one transition; ``obs`` and ``next_obs`` are (stack, 84, 84) uint8 stacks."""
        if not self.episode_open:
            # After a reset the stack repeats its frame: one slot. Otherwise (the buffer starts in the
            # middle of an episode, e.g. on a resume without saved replay) every frame of it gets a slot.
            first_frames = obs[-1:] if (obs == obs[-1]).all() else obs
            for offset, frame in enumerate(first_frames):
                self.current = self._write_frame(frame, offset)
            self.episode_open = True
        slot = self.current
        self.actions[slot], self.rewards[slot], self.terminated[slot] = action, reward, terminated
        self.current = self._write_frame(next_obs[-1], min(self.stack - 1, int(self.offset[slot]) + 1))
        self.has_transition[slot] = True
        if terminated or truncated:
            self.episode_open = False

    def __len__(self) -> int:
        """Slots in use (transitions plus one final frame per ended episode)."""
        return min(self.slots_written, self.capacity)

    def _stack_slots(self, slots: np.ndarray) -> np.ndarray:
        back = np.minimum(np.arange(self.stack - 1, -1, -1)[None, :], self.offset[slots][:, None])
        return (slots[:, None] - back) % self.capacity

    def _sampleable(self, slots: np.ndarray) -> np.ndarray:
        ok = self.has_transition[slots]
        if self.slots_written > self.capacity:
            # The oldest slots' stacks may reach back past the write head, into newer frames.
            ok &= (slots - self.head) % self.capacity >= self.offset[slots]
        return ok

    def sample_slots(self, n: int) -> np.ndarray:
        """Slots of ``n`` transitions drawn uniformly (with replacement) from all stored ones."""
        chosen = np.empty(0, dtype=np.int64)
        for _ in range(1000):  # rejection sampling is uniform over the sampleable slots
            candidates = self.rng.integers(0, len(self), size=2 * n + 8)
            chosen = np.concatenate([chosen, candidates[self._sampleable(candidates)]])
            if len(chosen) >= n:
                return chosen[:n]
        raise ValueError("the replay buffer holds no complete transition to sample")

    def state_dict(self) -> dict:
        """The stored data as tensors sharing the arrays' memory (no copy), and the write position."""
        arrays = {name: torch.from_numpy(getattr(self, name)) for name in self._ARRAYS}
        return {**arrays, "head": self.head, "slots_written": self.slots_written, "current": self.current,
                "episode_open": self.episode_open}

    def load_state_dict(self, state: dict) -> None:
        for name in self._ARRAYS:
            np.copyto(getattr(self, name), state[name].numpy())
        self.head, self.slots_written = state["head"], state["slots_written"]
        self.current, self.episode_open = state["current"], state["episode_open"]

    def sample(self, n: int) -> Batch:
        slots = self.sample_slots(n)
        # A next observation is its observation shifted by one frame (the next slot's offset is one
        # more, capped), so stack + 1 frames per transition hold both: obs and next_obs are views.
        frame_slots = np.concatenate([self._stack_slots(slots), (slots[:, None] + 1) % self.capacity], axis=1)
        to_device = lambda array: torch.from_numpy(array).to(self.device, non_blocking=True)
        frames = to_device(self.frames[frame_slots])
        return Batch(
            obs=frames[:, :-1],
            actions=to_device(self.actions[slots].astype(np.int64)),
            rewards=to_device(self.rewards[slots]),
            next_obs=frames[:, 1:],
            terminated=to_device(self.terminated[slots].astype(np.float32)),
        )


# ---------------------------------------------------------------------------------------------------
# Network and helpers


class QNetwork(nn.Module):
    """The DQN CNN, with named layers so the dormant-neuron tags read conv1 ... fc1.

    ``dopamine`` is the paper's network, Dopamine's Flax ``ScalableNatureDQNNetwork``
    (``dopamine/labs/redo/networks.py``): the Nature layout with Flax's default SAME padding (feature
    maps 21x21, 11x11, 11x11; conv2 is padded 1 before and 2 after, as Flax does), Xavier-uniform
    weights and zero biases in every layer. Flax flattens NHWC where PyTorch flattens NCHW: that only
    permutes fc1's input columns, whose initial weights are i.i.d., so the two are the same network.
    ``nature`` is the Nature/CleanRL network: VALID padding (20x20, 9x9, 7x7) and PyTorch's default init.
    """

    def __init__(self, n_actions: int, network: str = "dopamine"):
        super().__init__()
        same = network == "dopamine"
        self.conv2_pad = (1, 2, 1, 2) if same else None  # (left, right, top, bottom)
        self.conv1 = nn.Conv2d(4, 32, 8, stride=4, padding=2 if same else 0)
        self.conv2 = nn.Conv2d(32, 64, 4, stride=2)
        self.conv3 = nn.Conv2d(64, 64, 3, stride=1, padding=1 if same else 0)
        self.fc1 = nn.Linear(64 * (11 * 11 if same else 7 * 7), 512)
        self.q = nn.Linear(512, n_actions)
        if same:
            for layer in (self.conv1, self.conv2, self.conv3, self.fc1, self.q):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    @staticmethod
    def weight_init(network: str) -> Callable[[torch.Tensor], object] | None:
        """The initializer ReDo re-draws recycled weights with: the network's own (None: PyTorch's default)."""
        return nn.init.xavier_uniform_ if network == "dopamine" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.float() / 255.0))
        if self.conv2_pad is not None:
            x = F.pad(x, self.conv2_pad)
        x = F.relu(self.conv2(x))
        # ReLU after the flatten gives the same values; under torch.compile with channels_last it lets the
        # backward reuse the saved fc1 input instead of storing a ReLU mask, 0.6 ms of a 13 ms update on CPU.
        x = F.relu(self.conv3(x).flatten(1))
        x = F.relu(self.fc1(x))
        return self.q(x)


def make_train_step(q_network: nn.Module, target_network: nn.Module, optimizer: torch.optim.Optimizer, gamma: float,
                    compile: bool) -> Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]:
    """One DQN update: Huber loss on the max target, backward, optimizer step. Returns (loss, mean Q) as
    tensors, so that nothing waits for the device unless they are read. With ``compile``, the loss runs
    under torch.compile, which also generates its backward; the optimizer step stays eager (a fused
    Adam is one kernel already). ReDo's in-place edits of weights and Adam state are seen by the
    compiled code as by eager code (same tensors). If compiling fails, it warns once and runs eagerly."""

    def td_loss(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target_max = target_network(batch.next_obs).max(dim=1).values
            td_target = batch.rewards + gamma * target_max * (1 - batch.terminated)
        q_taken = q_network(batch.obs).gather(1, batch.actions[:, None]).squeeze(1)
        return F.smooth_l1_loss(q_taken, td_target), q_taken.detach().mean()

    loss_fn, compiling = (torch.compile(td_loss), True) if compile else (td_loss, False)

    def train_step(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal loss_fn, compiling
        try:  # the first call compiles, before anything of the step has run
            loss, q_mean = loss_fn(batch)
        except Exception as error:  # e.g. no C++ compiler on the machine
            if not compiling:
                raise
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            print(f"warning: torch.compile failed ({type(error).__name__}: {reason}); training eagerly", file=sys.stderr)
            loss_fn = td_loss
            loss, q_mean = loss_fn(batch)
        compiling = False
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach(), q_mean

    return train_step


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, fixed for a resume that changes --fused-adam or --channels-last.
    load_state_dict restores the saved ``fused``/``foreach`` choice over the one the optimizer was built
    with, and keeps the saved tensors' strides; torch's fused CPU Adam walks a parameter and its moments
    in memory order, so moments in another memory format than their parameter would update the wrong
    elements, silently. Here the optimizer's own choice wins and each moment takes its parameter's format."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            group[key] = optimizer.defaults[key]
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                param_state[key] = torch.empty_like(param).copy_(value)


def epsilon_at(args: Args, step: int) -> float:
    """Exploration epsilon at an agent step: linear from start-e to end-e over --epsilon-decay-steps, starting
    after the warm-up (Dopamine's ``linearly_decaying_epsilon``) or at step 0."""
    decay_start = args.learning_starts if args.epsilon_after_warmup else 0
    progress = min(1.0, max(0, step - decay_start) / args.epsilon_decay_steps)
    return args.start_e + (args.end_e - args.start_e) * progress


def gradient_steps_due(training_steps: int, replay_ratio: Fraction) -> int:
    """Gradient steps owed after ``training_steps`` agent steps past warm-up: exactly floor(steps * ratio)."""
    return training_steps * replay_ratio.numerator // replay_ratio.denominator


def atari_env_ids() -> list[str]:
    return [env_id for env_id, spec in gym.registry.items() if "ale_py" in str(spec.entry_point)]


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def argument_error(args: Args) -> str | None:
    """The first thing wrong with the arguments, as a one-line message, or None."""
    if args.torch_threads < 0:
        return f"--torch-threads must be >= 0, got {args.torch_threads}"
    if args.checkpoint_interval < 0:
        return f"--checkpoint-interval must be >= 0, got {args.checkpoint_interval}"
    positive = ["total_timesteps", "max_episode_steps", "buffer_size", "batch_size", "target_network_frequency", "epsilon_decay_steps",
                "redo_interval", "redo_batch_size", "log_interval", "eval_episodes"]
    for name in positive:
        if getattr(args, name) <= 0:
            return f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
    if not args.replay_ratio > 0:
        return f"--replay-ratio must be positive, got {args.replay_ratio}"
    if not args.redo_tau >= 0:
        return f"--redo-tau must be >= 0, got {args.redo_tau}"
    if not (0 < args.learning_rate < math.inf):
        return f"--learning-rate must be positive and finite, got {args.learning_rate}"
    if not 0 <= args.gamma <= 1:
        return f"--gamma must be in [0, 1], got {args.gamma}"
    if not 0 <= args.sticky_actions <= 1:
        return f"--sticky-actions is a probability in [0, 1], got {args.sticky_actions}"
    if args.noop_max < 0:
        return f"--noop-max must be >= 0, got {args.noop_max}"
    if not args.exp_name or os.sep in args.exp_name or "/" in args.exp_name or args.exp_name in (".", ".."):
        return f"--exp-name '{args.exp_name}' must be a plain name (no path separator): the run folder is runs/<env>__<exp-name>__..."
    if not (0 <= args.end_e <= 1 and 0 <= args.start_e <= 1 and 0 <= args.eval_epsilon <= 1):
        return "--start-e, --end-e and --eval-epsilon must be in [0, 1]"
    warm_up_needed = max(args.batch_size, args.redo_batch_size)
    if args.learning_starts < warm_up_needed:
        return (f"--learning-starts ({args.learning_starts}) is shorter than a batch ({warm_up_needed} transitions: "
                "--batch-size and --redo-batch-size); raise it")
    if args.resume is None and args.total_timesteps <= args.learning_starts:
        return (f"--total-timesteps ({args.total_timesteps:,}) is not past --learning-starts ({args.learning_starts:,}): "
                "the run would never train; raise --total-timesteps or lower --learning-starts")
    if args.buffer_size < warm_up_needed:
        return f"--buffer-size ({args.buffer_size}) is smaller than a batch ({warm_up_needed}); raise it"
    ids = atari_env_ids()
    if args.env_id not in ids:
        close = difflib.get_close_matches(args.env_id, ids, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "try e.g. DemonAttack-v4 or ALE/DemonAttack-v5"
        return f"unknown Atari env id '{args.env_id}': {hint}"
    needed, available = FrameReplayBuffer.bytes_needed(args.buffer_size), available_memory_bytes()
    if available is not None and needed > 0.9 * available:
        return (f"--buffer-size {args.buffer_size:,} needs {needed / 2**30:.1f} GiB of memory but "
                f"{available / 2**30:.1f} GiB is available; lower --buffer-size")
    return None


def log_dormant_fractions(writer, scores: dict[str, torch.Tensor], step: int, taus: list[float]) -> dict[float, float]:
    """Logs the dormant fractions per layer and in total at each tau; returns the totals by tau."""
    totals = {}
    for tau in taus:
        fractions = dormant_fractions(scores, tau)
        for name, fraction in fractions.items():
            writer.add_scalar(f"dormant/tau={tau:g}/{name}", fraction, step)
        totals[tau] = fractions["total"]
    return totals


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def evaluate(q_network: nn.Module, args: Args, device: torch.device) -> list[float]:
    """Full-game returns (unclipped, no life-loss terminals) of an epsilon-greedy policy."""
    env = make_env(args, evaluation=True)
    rng = np.random.default_rng(args.seed + 1)
    returns = []
    obs, _ = env.reset(seed=args.seed + 1)
    while len(returns) < args.eval_episodes:
        if rng.random() < args.eval_epsilon:
            action = int(rng.integers(env.action_space.n))
        else:
            with torch.no_grad():
                action = int(q_network(torch.as_tensor(obs, device=device)[None]).argmax(dim=1).item())
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            returns.append(float(info["episode"]["r"]))
            obs, _ = env.reset()
    env.close()
    return returns


# ---------------------------------------------------------------------------------------------------
# Checkpoints


_WRAPPER_STATE_TYPES = (int, float, np.ndarray, collections.deque, np.random.Generator)
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pt", "checkpoint.prev.pt"


def to_plain(value):
    """``value`` in types that ``torch.load(weights_only=True)`` reads: arrays as tensors, deques and numpy
    generators as tagged dicts. Loading such a file can run no code."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(value.copy())}
    if isinstance(value, collections.deque):
        return {"__deque__": [to_plain(item) for item in value], "maxlen": value.maxlen}
    if isinstance(value, np.random.Generator):
        return {"__generator__": value.bit_generator.state}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item) for item in value)
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def from_plain(value):
    """The inverse of :func:`to_plain`."""
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy().copy()
        if "__deque__" in value:
            return collections.deque((from_plain(item) for item in value["__deque__"]), maxlen=value["maxlen"])
        if "__generator__" in value:
            bit_generator = getattr(np.random, value["__generator__"]["bit_generator"])()
            bit_generator.state = value["__generator__"]
            return np.random.Generator(bit_generator)
        return {key: from_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_plain(item) for item in value)
    return value


def env_state(env) -> dict:
    """What the environment needs to continue exactly: the emulator with its RNG (as bytes), and the
    counters, frame stacks and RNGs of every wrapper (lives, episode return, noop RNG, ...)."""
    layers, layer = [], env
    while layer is not None:
        layers.append(to_plain({k: v for k, v in vars(layer).items() if isinstance(v, _WRAPPER_STATE_TYPES)}))
        layer = getattr(layer, "env", None)
    return {"layers": layers, "ale": env.unwrapped.ale.cloneState(include_rng=True).__getstate__()}


def restore_env_state(env, state: dict) -> None:
    layer = env
    for saved in state["layers"]:
        for key, value in from_plain(saved).items():
            setattr(layer, key, value)
        layer = getattr(layer, "env", None)
    ale_state = ale_py.ALEState.__new__(ale_py.ALEState)
    ale_state.__setstate__(state["ale"])
    env.unwrapped.ale.restoreState(ale_state)


def rng_state(rng: np.random.Generator, device: torch.device) -> dict:
    """Every random number generator the run draws from: python's, numpy's, torch's (and CUDA's), the sampler's."""
    return to_plain({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                     "generator": rng.bit_generator.state})


def restore_rng_state(state: dict, rng: np.random.Generator, device: torch.device) -> None:
    state = from_plain(state)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    rng.bit_generator.state = state["generator"]


def save_checkpoint(checkpoint: dict, run_dir: str) -> bool:
    """Writes run_dir/checkpoint.pt atomically and keeps the one before as checkpoint.prev.pt: a crash, a full
    disk or one corrupted file never leaves the run without a readable checkpoint."""
    path, previous = os.path.join(run_dir, CHECKPOINT), os.path.join(run_dir, PREVIOUS_CHECKPOINT)
    tmp_path = path + ".tmp"
    buffer = checkpoint.get("buffer")
    needed = sum(t.nbytes for t in buffer.values() if isinstance(t, torch.Tensor)) if buffer else 0
    try:
        free = shutil.disk_usage(run_dir).free
        if needed > free:
            raise OSError(f"the replay buffer needs {needed / 2**30:.1f} GiB and the disk has {free / 2**30:.1f} GiB free")
        with open(tmp_path, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        if os.path.exists(path):
            os.replace(path, previous)
        os.replace(tmp_path, path)
        return True
    except OSError as error:
        print(f"\nwarning: could not write the checkpoint {path} ({error}); the previous one is kept, training goes on",
              file=sys.stderr)
        try:
            os.remove(tmp_path)
        except OSError:
            pass
        return False


def read_checkpoint(path: str) -> tuple[dict | None, str | None]:
    """(checkpoint, None), or (None, why it cannot be used). Reads with ``weights_only=True``: tensors and plain
    values only, so a tampered file cannot run code."""
    if not os.path.isfile(path):
        return None, f"no checkpoint at {path}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        reason = (str(error).strip().splitlines() or [""])[-1][:200]
        return None, (f"{path} was refused: it holds objects that a weights-only load does not create ({reason}); "
                      "it was not written by this version of dqn_redo.py")
    except Exception as error:
        return None, f"{path} is not a readable checkpoint ({type(error).__name__}: {str(error)[:200]})"
    if not isinstance(checkpoint, dict) or not {"args", "global_step", "q_network"} <= checkpoint.keys():
        return None, f"{path} is not a dqn_redo.py checkpoint"
    return checkpoint, None


def load_checkpoint(path: str) -> tuple[dict | None, str | None]:
    """The checkpoint to resume from: ``path`` (a run folder or its checkpoint.pt), or, if that cannot be read,
    the previous one beside it, with a warning. Returns (checkpoint, None) or (None, a one-line error)."""
    run_dir = path if os.path.isdir(path) else os.path.dirname(path) or "."
    path = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    checkpoint, error = read_checkpoint(path)
    previous = os.path.join(run_dir, PREVIOUS_CHECKPOINT)
    if checkpoint is None and os.path.basename(path) == CHECKPOINT and os.path.isfile(previous):
        checkpoint, previous_error = read_checkpoint(previous)
        if checkpoint is None:
            return None, f"{error}; the previous one cannot be used either: {previous_error}"
        print(f"warning: {error}; resuming from the previous checkpoint {previous} "
              f"(step {checkpoint['global_step']:,})", file=sys.stderr)
    if checkpoint is None:
        hint = "" if os.path.isfile(path) else ": --resume takes a run folder or its checkpoint.pt"
        return None, error + hint
    checkpoint["run_dir"] = run_dir  # wherever the run folder is now
    return checkpoint, None


def resume_mismatch(args: Args, checkpoint: dict) -> str | None:
    for key, value in checkpoint["args"].items():
        if key not in CHANGEABLE_ON_RESUME and getattr(args, key) != value:
            flag = f"--{key.replace('_', '-')}"
            return (f"cannot resume with {flag} {getattr(args, key)}: the run was made with {flag} {value} "
                    "(only --total-timesteps, logging, checkpointing, evaluation and speed options may change)")
    if args.total_timesteps <= checkpoint["global_step"]:
        return (f"--total-timesteps {args.total_timesteps:,} is not past the checkpoint's step "
                f"{checkpoint['global_step']:,}: the run is done up to there; pass a larger --total-timesteps to extend it")
    return None


# ---------------------------------------------------------------------------------------------------
# Training


def main(args: Args, checkpoint: dict | None = None) -> None:
    """Trains. ``checkpoint``: the one ``args.resume`` names, if the caller has read it already."""
    error = argument_error(args)
    if error is None and args.resume is not None and checkpoint is None:
        checkpoint, error = load_checkpoint(args.resume)
    if error is None and checkpoint is not None:
        error = resume_mismatch(args, checkpoint)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

    from torch.utils.tensorboard import SummaryWriter

    if checkpoint is None:
        run_name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        while os.path.exists(f"runs/{run_name}"):  # two runs started in the same second
            run_name += "_"
        run_dir = f"runs/{run_name}"
    else:
        run_dir = checkpoint["run_dir"]
    start_step = checkpoint["global_step"] if checkpoint else 0
    # purge_step drops what an interrupted run logged after its checkpoint: curves continue without duplicates.
    writer = SummaryWriter(run_dir, purge_step=start_step if checkpoint else None)
    writer.add_text(
        "hyperparameters" if checkpoint is None else f"resumed at step {start_step}",
        "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items()),
        start_step,
    )

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"{'resuming' if checkpoint else 'run'} {run_dir} at step {start_step:,} on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"network {args.network}; {args.env_id}: sticky actions {args.sticky_actions:g}, "
          f"{'life loss terminal' if args.terminal_on_life_loss else 'full-game episodes'}, no-op reset "
          f"{args.noop_max}, FIRE reset {'on' if args.fire_reset else 'off'}, cap {args.max_episode_steps:,} steps; "
          f"epsilon {args.start_e:g} -> {args.end_e:g} over {args.epsilon_decay_steps:,} steps "
          f"{'after the warm-up' if args.epsilon_after_warmup else 'from step 0'}")
    env = make_env(args)
    n_actions = env.action_space.n
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    q_network = QNetwork(n_actions, args.network).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, eps=args.adam_eps,
                                 fused=args.fused_adam)
    target_network = QNetwork(n_actions, args.network).to(device, memory_format=memory_format)
    target_network.load_state_dict(q_network.state_dict())
    print(f"allocating the replay buffer: {args.buffer_size:,} transitions, "
          f"{FrameReplayBuffer.bytes_needed(args.buffer_size) / 2**30:.2f} GiB")
    rb = FrameReplayBuffer(args.buffer_size, 4, (84, 84), device, rng)
    train_step = make_train_step(q_network, target_network, optimizer, args.gamma, args.compile)

    obs, _ = env.reset(seed=args.seed)
    counters = {"gradient_steps": 0, "training_steps": 0, "warmup_left": args.learning_starts, "episode_steps": 0,
                "last_return": float("nan"), "last_dormant": float("nan")}
    if checkpoint is not None:
        q_network.load_state_dict(checkpoint["q_network"])
        target_network.load_state_dict(checkpoint["target_network"])
        load_optimizer_state(optimizer, checkpoint["optimizer"])
        restore_env_state(env, checkpoint["env"])
        obs = checkpoint["obs"].numpy().copy()
        counters.update(checkpoint["counters"])
        restore_rng_state(checkpoint["rng"], rng, device)
        if checkpoint["buffer"] is not None:
            rb.load_state_dict(checkpoint["buffer"])
        else:  # refill the replay before training again; the schedules continue where they were
            counters["warmup_left"] = args.learning_starts
            print(f"the checkpoint has no replay buffer: refilling {args.learning_starts:,} steps before training")
        checkpoint.clear()  # frees the loaded copy of the replay, for the caller's reference too

    def make_checkpoint(next_step: int) -> dict:
        return {
            "args": dataclasses.asdict(args), "run_dir": run_dir, "global_step": next_step, "counters": dict(counters),
            "q_network": q_network.state_dict(), "target_network": target_network.state_dict(),
            "optimizer": optimizer.state_dict(), "env": env_state(env), "obs": torch.from_numpy(obs.copy()),
            "rng": rng_state(rng, device),
            "buffer": rb.state_dict() if args.checkpoint_buffer else None,
        }

    # First gradient step whose loss or mean Q was not finite, tracked on the device: no sync per step.
    step_counter = torch.tensor(counters["gradient_steps"], device=device)  # continues on resume
    first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)

    def stop_if_diverged(global_step: int) -> None:
        bad_step = int(first_nonfinite.item())
        if bad_step >= 0:
            print(f"\nerror: the TD loss or Q-values became NaN or infinite at gradient step {bad_step:,} (detected at "
                  f"agent step {global_step:,}); stopping without overwriting the last checkpoint in {run_dir}",
                  file=sys.stderr)
            writer.close()
            sys.exit(3)

    stop_signal = None

    def request_stop(signum, frame):
        nonlocal stop_signal
        if stop_signal is not None:
            print(f"\n{signal.Signals(signum).name} again: exiting now, without a checkpoint", file=sys.stderr)
            os._exit(128 + signum)
        stop_signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
              "(send it again to exit at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    dormant_taus = sorted({*DORMANT_TAUS, args.redo_tau})
    replay_ratio = Fraction(str(args.replay_ratio))  # exact: 0.1 is 1/10, not 0.1000000000000000055
    start_time = last_print = time.time()
    last_print_step, global_step = start_step, start_step - 1
    for global_step in range(start_step, args.total_timesteps):
        epsilon = epsilon_at(args, global_step)
        if rng.random() < epsilon:
            action = int(rng.integers(n_actions))
        else:
            with torch.no_grad():
                action = int(q_network(torch.as_tensor(obs, device=device)[None]).argmax(dim=1).item())

        next_obs, reward, terminated, truncated, info = env.step(action)
        rb.add(obs, action, float(np.clip(reward, -1.0, 1.0)), next_obs, terminated, truncated)
        obs = next_obs
        counters["episode_steps"] += 1
        if "episode" in info:  # the real game ended, not just a life
            counters["last_return"] = float(info["episode"]["r"])
            writer.add_scalar("charts/episodic_return", counters["last_return"], global_step)
            writer.add_scalar("charts/episodic_length", counters["episode_steps"], global_step)  # agent steps
            writer.add_scalar("charts/epsilon", epsilon, global_step)
            counters["episode_steps"] = 0
        if terminated or truncated:
            obs, _ = env.reset()

        if counters["warmup_left"] > 0:
            counters["warmup_left"] -= 1
            if counters["warmup_left"] == 0:  # the next speed and ETA count training steps only
                last_print, last_print_step = time.time(), global_step + 1
        else:
            if counters["training_steps"] == 0:  # the fractions at initialization, before any update
                scores = dormant_scores(q_network, rb.sample(args.redo_batch_size).obs)
                counters["last_dormant"] = log_dormant_fractions(writer, scores, global_step, dormant_taus)[args.redo_tau]
            counters["training_steps"] += 1
            while counters["gradient_steps"] < gradient_steps_due(counters["training_steps"], replay_ratio):
                loss, q_mean = train_step(rb.sample(args.batch_size))
                counters["gradient_steps"] += 1
                step_counter += 1
                first_nonfinite = torch.where(
                    (first_nonfinite < 0) & ~torch.isfinite(loss + q_mean), step_counter, first_nonfinite)
                gradient_steps = counters["gradient_steps"]

                if gradient_steps % args.log_interval == 0:
                    stop_if_diverged(global_step)
                    writer.add_scalar("losses/td_loss", loss.item(), global_step)
                    writer.add_scalar("losses/q_values", q_mean.item(), global_step)
                    writer.add_scalar("charts/SPS", int((global_step - start_step) / (time.time() - start_time)), global_step)
                    writer.add_scalar("charts/gradient_steps", gradient_steps, global_step)

                if gradient_steps % args.redo_interval == 0:
                    stop_if_diverged(global_step)
                    states = rb.sample(args.redo_batch_size).obs
                    if args.enable_redo:
                        result = recycle_dormant(q_network, optimizer, states, tau=args.redo_tau,
                                                 init_fn=QNetwork.weight_init(args.network))
                        scores = result["scores"]  # from before this recycling
                        for name, count in result["recycled"].items():
                            writer.add_scalar(f"redo/recycled/{name}", count, global_step)
                        writer.add_scalar("redo/recycled/total", sum(result["recycled"].values()), global_step)
                    else:
                        scores = dormant_scores(q_network, states)
                    counters["last_dormant"] = log_dormant_fractions(writer, scores, global_step, dormant_taus)[args.redo_tau]

            if global_step % args.target_network_frequency == 0:
                target_network.load_state_dict(q_network.state_dict())

        if stop_signal is not None or (args.checkpoint_interval and (global_step + 1) % args.checkpoint_interval == 0):
            stop_if_diverged(global_step)
            save_checkpoint(make_checkpoint(global_step + 1), run_dir)
        if stop_signal is not None:
            env.close()
            writer.close()
            print(f"stopped at step {global_step + 1:,}; continue with: python {os.path.basename(__file__)} "
                  f"--resume {run_dir}", file=sys.stderr)
            sys.exit(128 + stop_signal)

        if time.time() - last_print > (2 if sys.stderr.isatty() else 60) or global_step == args.total_timesteps - 1:
            # Speed over the last print interval: the fast warm-up would make an average too optimistic.
            now = time.time()
            sps = (global_step + 1 - last_print_step) / max(now - last_print, 1e-6)
            last_print, last_print_step = now, global_step + 1
            steps_left = args.total_timesteps - global_step - 1
            eta = "warming up" if counters["warmup_left"] > 0 else (
                f"ETA {format_duration(steps_left / sps if steps_left else 0)}")
            line = (f"step {global_step + 1:,}/{args.total_timesteps:,} | {sps:.0f} SPS | eps {epsilon:.3f} | "
                    f"return {counters['last_return']:.0f} | dormant(tau={args.redo_tau:g}) "
                    f"{100 * counters['last_dormant']:.1f}% | {eta}")
            print(f"\r{line}" if sys.stderr.isatty() else line, end="" if sys.stderr.isatty() else "\n",
                  file=sys.stderr, flush=True)
    print(file=sys.stderr)
    stop_if_diverged(global_step)
    if args.checkpoint_interval and (global_step + 1) % args.checkpoint_interval != 0:
        save_checkpoint(make_checkpoint(global_step + 1), run_dir)  # so that the run can be extended

    if args.save_model:
        model_path = f"{run_dir}/{args.exp_name}.pt"
        torch.save({"model": q_network.state_dict(), "args": dataclasses.asdict(args)}, model_path)  # weights_only-safe
        print(f"model saved to {model_path}")
        returns = evaluate(q_network, args, device)
        for episode, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, episode)
        print(f"evaluation over {len(returns)} episodes: mean return {np.mean(returns):.1f}")

    env.close()
    writer.close()


if __name__ == "__main__":
    args = tyro.cli(Args)
    checkpoint = None
    if args.resume is not None:
        checkpoint, error = load_checkpoint(args.resume)
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        # The run's own arguments are the defaults: only what is given again on the command line changes.
        saved_args = {key: value for key, value in checkpoint["args"].items() if key in Args.__dataclass_fields__}
        args = tyro.cli(Args, default=Args(**{**saved_args, "resume": args.resume}))
    main(args, checkpoint)
