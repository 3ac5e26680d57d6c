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
import hashlib
import importlib.util
import json
import math
import os
import pickle
import platform
import random
import shutil
import signal
import subprocess
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
from stable_baselines3.common.atari_wrappers import FireResetEnv, MaxAndSkipEnv, NoopResetEnv

from redo import dormant_fractions, dormant_overlap, dormant_scores, recycle_dormant, srank

gym.register_envs(ale_py)

DORMANT_TAUS = (0.0, 0.025, 0.1)


@dataclass
class Args:
    # Experiment
    preset: Literal["dqn", "drq-eps"] = "dqn"
    """defaults for every other flag (each one can still be given): dqn, the paper's DQN; drq-eps, DrQ(eps) on
    Atari 100k (README)"""
    exp_name: str | None = None
    """the name of this experiment, part of the run folder's name (default: <preset>_<baseline|redo>_rr<ratio>)"""
    seed: int = 1
    """seed of the experiment: python, numpy, torch, the environment and the replay sampling"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """use the GPU when there is one (otherwise the CPU)"""
    log_interval: int = 100
    """gradient steps between logs of the losses and SPS"""
    save_model: bool = False
    """save the Q-network and args to runs/<run>/<exp-name>.pt at the end"""
    eval_episodes: int = 0
    """full games played at --eval-epsilon after training, logged as eval/episodic_return (0: none)"""
    eval_epsilon: float = 0.001
    """epsilon of the evaluation"""

    # Environment (the paper's protocol by default; see the README for CleanRL's)
    env_id: str = "DemonAttack-v4"
    """Atari id; `DemonAttack-v4`, `DemonAttackNoFrameskip-v4` and `ALE/DemonAttack-v5` are the same game here"""
    sticky_actions: float = 0.25
    """probability that the emulator repeats the previous action at each frame (0: none)"""
    terminal_on_life_loss: bool = False
    """end the learning episode (no bootstrap) when a life is lost; the game goes on, with no no-op (Atari 100k)"""
    noop_max: int = 0
    """1 to this many no-op frames at the start of every game, also in evaluation (CleanRL, Atari 100k: 30)"""
    fire_reset: bool = False
    """press FIRE after each reset in games that need it (CleanRL)"""
    max_episode_steps: int = 27_000
    """agent steps after which an episode is truncated (bootstrapped); 27,000 is 108,000 frames"""

    # Algorithm (Dopamine's DQN)
    network: Literal["dopamine", "nature"] = "dopamine"
    """dopamine: the paper's (SAME padding, Xavier weights, zero biases); nature: CleanRL's (VALID, PyTorch init)"""
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
    """hold epsilon at start-e through the warm-up, then decay it (Dopamine); off: decay from step 0 (CleanRL)"""
    learning_starts: int = 20_000
    """agent steps of warm-up (no training)"""
    replay_ratio: float = 0.25
    """gradient steps per agent step after warm-up: 0.25 is one every 4 steps, 2 is two per step"""
    n_step: int = 1
    """n-step returns: the rewards of up to n transitions of one episode, then the bootstrap (none after a
    termination)"""
    double_dqn: bool = False
    """the online network picks the next action, the target network values it"""
    dueling: bool = False
    """a value head and an advantage head on the shared 512-unit layer: q = v + a - mean(a)"""
    augmentation: Literal["none", "drq"] = "none"
    """drq: DrQ(eps)'s random shift (edge-pad 4, crop) and intensity, on obs and next_obs of each update"""

    # ReDo
    enable_redo: bool = False
    """recycle dormant neurons (dormant fractions are logged either way)"""
    redo_tau: float = 0.1
    """dormancy threshold: a neuron with score <= tau is recycled"""
    redo_interval: int = 1000
    """gradient steps between dormant-neuron checks (logging, and recycling with --enable-redo)"""
    redo_end_update: int | None = None
    """recycle only at checks before this gradient step; None: to the end (DrQ(eps)'s gin: 400000 - 1600 x RR)"""
    redo_batch_size: int = 256
    """states sampled uniformly from the replay to score neurons (the authors' code: 256; the paper's text: 64)"""
    srank_states: int = 1024
    """replay states whose fc1 features give srank/fc1 at each check (>= 512 for a full-rank reading)"""

    # Speed (results do not depend on these beyond float rounding)
    compile: bool = True
    """compile the TD loss and its backward with torch.compile; falls back to eager if compiling fails"""
    channels_last: bool = True
    """keep conv weights and activations in channels_last memory format (faster convolutions)"""
    fused_adam: bool = True
    """use torch's fused Adam: the same update rule, one kernel for all parameters"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default); use 1 per process when running several at once"""

    # Checkpoints
    checkpoint_interval: int = 100_000
    """agent steps between checkpoints (runs/<run>/checkpoint.pt), and one at the end; 0: only on Ctrl-C/SIGTERM"""
    checkpoint_buffer: bool = False
    """also save the replay (7.1 KB per transition): then a resumed run is identical to an uninterrupted one"""
    resume: str | None = None
    """a run folder or checkpoint to continue; its arguments are the defaults, and only some may change (README)"""

    # CleanRL's conventions
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (the TensorBoard scalars, mirrored)"""
    wandb_project_name: str = "redo"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to capture videos of the agent's training games (to the `videos/<run name>` folder)"""


# DrQ(eps) on Atari 100k (Dopamine's labs/atari_100k/configs/DrQ_eps.gin with the ReDo lab's network; README table).
PRESETS: dict[str, dict] = {
    "dqn": {},
    "drq-eps": dict(
        n_step=10, double_dqn=True, dueling=True, augmentation="drq", learning_rate=1e-4, adam_eps=1.5e-4,
        learning_starts=1600, epsilon_decay_steps=5000, target_network_frequency=1, replay_ratio=1.0, batch_size=32,
        sticky_actions=0.0, terminal_on_life_loss=True, noop_max=30, total_timesteps=100_000, buffer_size=100_000,
        eval_episodes=100, redo_batch_size=64),
}


def preset_args(preset: str, **overrides) -> Args:
    """The arguments of a preset, with ``overrides``: what ``--preset`` gives on the command line."""
    return dataclasses.replace(Args(), preset=preset, **{**PRESETS[preset], **overrides})


CHANGEABLE_ON_RESUME = {"track", "wandb_project_name", "wandb_entity", "total_timesteps", "log_interval",
                        "checkpoint_interval", "checkpoint_buffer", "save_model", "eval_episodes", "eval_epsilon",
                        "cuda", "compile", "channels_last", "fused_adam", "torch_threads", "resume", "exp_name"}


# ---------------------------------------------------------------------------------------------------
# Environment


class LifeLossTerminal(gym.Wrapper):
    """A lost life ends the learning episode (``terminated``) but not the game: the ``reset`` that follows returns
    the current frame without stepping, as Dopamine's runner begins its next episode. (SB3's EpisodicLifeEnv plays
    a no-op agent step there, whose reward the learner never sees.) Only a game over resets the game."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives, self.game_over, self.last_obs = 0, True, None

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        self.game_over, self.last_obs = terminated or truncated, obs
        life_lost = 0 < lives < self.lives  # lives only go down; 0 is the game over itself
        self.lives = lives
        return obs, reward, terminated or life_lost, truncated, info

    def reset(self, **kwargs):
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
            self.lives, self.game_over = self.env.unwrapped.ale.lives(), False
            return obs, info
        return self.last_obs, {}


def make_env(args: Args, evaluation: bool = False, video_folder: str | None = None) -> gym.Env:
    """The Atari stack of ``args``, with exactly 4 emulator frames per agent step for every id.

    The defaults are Dopamine's (``atari_lib.create_atari_environment``): sticky actions 0.25, a max
    over the last two of the 4 frames, full-game episodes, no no-op or FIRE resets, 84x84 greyscale
    (area interpolation), 4 stacked frames, at most 27,000 agent steps. ``evaluation`` plays full games.
    With ``video_folder``, whole games (not lives) are recorded there in colour, one frame per agent step:
    games 0, 1, 8, 27, ..., 729, 1000 and every 1000th after (gymnasium's capped cubic schedule).
    """
    # frameskip=1 overrides the id's own skipping (v4: 2-4 frames at random, v5: 4), so that
    # MaxAndSkipEnv's 4 is the only one. The ALE applies stickiness at every emulator frame, as in Dopamine.
    env = gym.make(args.env_id, frameskip=1, obs_type="grayscale", repeat_action_probability=args.sticky_actions,
                   max_num_frames_per_episode=4 * args.max_episode_steps,
                   render_mode="rgb_array" if video_folder else None)
    env = gym.wrappers.RecordEpisodeStatistics(env)  # innermost: real, unclipped, full-game returns
    if args.noop_max > 0:
        env = NoopResetEnv(env, noop_max=args.noop_max)
    env = MaxAndSkipEnv(env, skip=4)
    if video_folder:  # below the life-loss wrapper, whose resets are only those of a new game
        env = gym.wrappers.RecordVideo(env, video_folder, fps=15, disable_logger=True)
    if args.terminal_on_life_loss and not evaluation:
        env = LifeLossTerminal(env)
    if args.fire_reset and "FIRE" in env.unwrapped.get_action_meanings():
        env = FireResetEnv(env)
    env = gym.wrappers.ResizeObservation(env, (84, 84))
    return gym.wrappers.FrameStackObservation(env, 4)  # pads a new episode with its first frame


# ---------------------------------------------------------------------------------------------------
# Replay


class Batch(NamedTuple):
    obs: torch.Tensor  # uint8 (B, 4, 84, 84)
    actions: torch.Tensor  # int64 (B,)
    rewards: torch.Tensor  # float32 (B,): the n-step return, sum_k gamma^k r_k over the window
    next_obs: torch.Tensor  # uint8 (B, 4, 84, 84): the state the return bootstraps from
    terminated: torch.Tensor  # float32 (B,): 1 = the window ends in a termination (no bootstrap)
    discounts: torch.Tensor  # float32 (B,): gamma^(transitions in the window), 0 where terminated


class FrameReplayBuffer:
    """Replay that stores each frame once and rebuilds the frame stacks when sampling.

    Slot ``s`` of a ring holds one frame and the transition whose observation ends with that frame;
    its next observation ends with the frame in slot ``s + 1``. ``offset[s]`` counts the frames of
    the episode before slot ``s`` (capped at 3): a stack never reaches into another episode and
    repeats the episode's first frame instead, as the environment's stack does after a reset (a first
    observation that is not padded that way gets a slot per frame). An episode's final frame gets a
    slot of its own with no transition, so a truncated transition bootstraps from the real final
    observation. About 7.07 KB per slot.

    With ``n_step`` > 1 a sampled transition's return runs over up to ``n_step`` transitions of its episode
    (following slots): it stops after a termination (no bootstrap) or at an episode's final frame (a truncation:
    bootstrap from that frame), and a window cut short by the unfinished newest episode is not sampled.
    """

    SLOT_BYTES = 84 * 84 + 4 + 4 + 1 + 1 + 1  # frame, action, reward, terminated, has_transition, offset
    _ARRAYS = ("frames", "actions", "rewards", "terminated", "has_transition", "offset")

    def __init__(self, capacity: int, stack: int, frame_shape: tuple[int, int], device: torch.device,
                 rng: np.random.Generator, n_step: int = 1, gamma: float = 0.99):
        self.capacity, self.stack, self.device, self.rng = capacity, stack, device, rng
        self.n_step, self.gamma = n_step, gamma
        self.frames = np.zeros((capacity, *frame_shape), dtype=np.uint8)
        self.actions = np.zeros(capacity, dtype=np.int32)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.bool_)
        self.has_transition = np.zeros(capacity, dtype=np.bool_)
        self.offset = np.zeros(capacity, dtype=np.uint8)
        for name in self._ARRAYS:
            getattr(self, name).fill(0)  # touch every page now: a buffer too big fails here, not hours later
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

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool,
            truncated: bool) -> None:
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

    def _windows(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per transition: the slots of its n-step window (stack, n), which of them it spans, and whether the window
        is whole (not cut short by the episode still being played)."""
        window = (slots[:, None] + np.arange(self.n_step)) % self.capacity
        # Transition k + 1 belongs to the window if transition k did not terminate and the episode went on after it.
        goes_on = ~self.terminated[window[:, :-1]] & self.has_transition[window[:, 1:]]
        spanned = np.concatenate([np.ones((len(slots), 1), bool), np.logical_and.accumulate(goes_on, axis=1)], axis=1)
        steps = spanned.sum(axis=1)
        ended = self.terminated[window[np.arange(len(slots)), steps - 1]]
        reaches_now = (slots + steps) % self.capacity == self.current
        cut_short = (steps < self.n_step) & ~ended & self.episode_open & reaches_now
        return window, spanned, ~cut_short

    def _sampleable(self, slots: np.ndarray) -> np.ndarray:
        ok = self.has_transition[slots]
        if self.slots_written > self.capacity:
            # The oldest slots' stacks may reach back past the write head, into newer frames.
            ok &= (slots - self.head) % self.capacity >= self.offset[slots]
        if self.n_step > 1:
            ok[ok] &= self._windows(slots[ok])[2]
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
        window, spanned, _ = self._windows(slots)
        steps = spanned.sum(axis=1)
        terminated = self.terminated[window[np.arange(n), steps - 1]]
        returns = (self.rewards[window] * spanned * self.gamma ** np.arange(self.n_step)).sum(axis=1)
        discounts = np.where(terminated, 0.0, self.gamma ** steps)
        to_device = lambda array: torch.from_numpy(array).to(self.device, non_blocking=True)
        if self.n_step == 1:
            # A next observation is its observation shifted by one frame (the next slot's offset is one
            # more, capped), so stack + 1 frames per transition hold both: obs and next_obs are views.
            frame_slots = np.concatenate([self._stack_slots(slots), (slots[:, None] + 1) % self.capacity], axis=1)
            frames = to_device(self.frames[frame_slots])
            obs, next_obs = frames[:, :-1], frames[:, 1:]
        else:
            obs = to_device(self.frames[self._stack_slots(slots)])
            next_obs = to_device(self.frames[self._stack_slots((slots + steps) % self.capacity)])
        return Batch(
            obs=obs,
            actions=to_device(self.actions[slots].astype(np.int64)),
            rewards=to_device(returns.astype(np.float32)),
            next_obs=next_obs,
            terminated=to_device(terminated.astype(np.float32)),
            discounts=to_device(discounts.astype(np.float32)),
        )


# ---------------------------------------------------------------------------------------------------
# Network and update


class QNetwork(nn.Module):
    """The DQN CNN, with named layers so the dormant-neuron tags read conv1 ... fc1.

    ``dopamine`` is the paper's network, Dopamine's Flax ``ScalableNatureDQNNetwork``
    (``dopamine/labs/redo/networks.py``): the Nature layout with Flax's default SAME padding (feature
    maps 21x21, 11x11, 11x11; conv2 is padded 1 before and 2 after, as Flax does), Xavier-uniform
    weights and zero biases in every layer. Flax flattens NHWC where PyTorch flattens NCHW: that only
    permutes fc1's input columns, whose initial weights are i.i.d., so the two are the same network.
    ``nature`` is the Nature/CleanRL network: VALID padding (20x20, 9x9, 7x7) and PyTorch's default init.
    ``dueling`` replaces the Q layer by a value and an advantage head on fc1, as Dopamine's ``FullRainbowNetwork``.
    """

    def __init__(self, n_actions: int, network: str = "dopamine", dueling: bool = False):
        super().__init__()
        same = network == "dopamine"
        self.n_actions, self.dueling = n_actions, dueling
        self.conv2_pad = (1, 2, 1, 2) if same else None  # (left, right, top, bottom)
        self.conv1 = nn.Conv2d(4, 32, 8, stride=4, padding=2 if same else 0)
        self.conv2 = nn.Conv2d(32, 64, 4, stride=2)
        self.conv3 = nn.Conv2d(64, 64, 3, stride=1, padding=1 if same else 0)
        self.fc1 = nn.Linear(64 * (11 * 11 if same else 7 * 7), 512)
        if dueling:
            self.value, self.advantage = nn.Linear(512, 1), nn.Linear(512, n_actions)
        else:
            self.q = nn.Linear(512, n_actions)
        if same:
            for layer in self.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    @staticmethod
    def weight_init(network: str) -> Callable[[torch.Tensor], object] | None:
        """The initializer ReDo re-draws recycled weights with: the network's own (None: PyTorch's default)."""
        return nn.init.xavier_uniform_ if network == "dopamine" else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc1's activations (B, 512): what the Q-values are read from. ``x``: frames in [0, 255], any dtype."""
        x = F.relu(self.conv1(x.float() / 255.0))
        if self.conv2_pad is not None:
            x = F.pad(x, self.conv2_pad)
        x = F.relu(self.conv2(x))
        # ReLU after the flatten gives the same values; under torch.compile with channels_last it lets the
        # backward reuse the saved fc1 input instead of storing a ReLU mask, 0.6 ms of a 13 ms update on CPU.
        x = F.relu(self.conv3(x).flatten(1))
        return F.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if not self.dueling:
            return self.q(x)
        advantage = self.advantage(x)
        return self.value(x) + advantage - advantage.mean(dim=1, keepdim=True)


def drq_augment(frames: torch.Tensor) -> torch.Tensor:
    """DrQ(eps)'s augmentation of a batch of frame stacks (B, C, H, W), as Dopamine's ``drq_image_augmentation``
    (``labs/atari_100k/atari_100k_rainbow_agent.py``): edge-pad 4 pixels, crop back to H x W at offsets drawn from
    0..7 in each direction, then scale by 1 + 0.05 * clip(N(0, 1), -2, 2). One crop and one scale per sample,
    shared by its C stacked frames. Returns float32 on the frames' [0, 255] scale (the network divides by 255;
    scaling commutes with the rest). Draws from torch's global generator."""
    b, _, h, w = frames.shape
    windows = F.pad(frames, (4, 4, 4, 4), mode="replicate").unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 9, 9, H, W)
    rows, cols = torch.randint(0, 8, (2, b), device=frames.device)
    cropped = windows[torch.arange(b, device=frames.device), :, rows, cols]  # copies only the crops
    intensity = 1.0 + 0.05 * torch.randn(b, 1, 1, 1, device=frames.device).clamp(-2.0, 2.0)
    return cropped.float() * intensity


def make_train_step(q_network: nn.Module, target_network: nn.Module, optimizer: torch.optim.Optimizer, compile: bool,
                    double_dqn: bool = False, augment: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]:
    """One DQN update: Huber loss on ``rewards + discounts * Q_target(next_obs, a')``, backward, optimizer step,
    with a' the target's argmax, or the online network's with ``double_dqn``. ``augment`` (e.g.
    :func:`drq_augment`) draws obs and next_obs afresh, independently, at each update. Returns (loss, mean Q) as
    tensors, so that nothing waits for the device unless they are read. With ``compile``, the loss runs
    under torch.compile, which also generates its backward; the optimizer step and the augmentation's draws
    stay eager (a fused Adam is one kernel already; eager draws keep the seeded stream). ReDo's in-place edits
    of weights and Adam state are seen by the compiled code as by eager code (same tensors). If compiling
    fails, it warns once and runs eagerly."""

    def td_loss(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
                discounts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            next_q = target_network(next_obs)
            chooser = q_network(next_obs) if double_dqn else next_q
            next_value = next_q.gather(1, chooser.argmax(dim=1, keepdim=True)).squeeze(1)
            td_target = rewards + discounts * next_value
        q_taken = q_network(obs).gather(1, actions[:, None]).squeeze(1)
        return F.smooth_l1_loss(q_taken, td_target), q_taken.detach().mean()

    loss_fn, compiling = (torch.compile(td_loss), True) if compile else (td_loss, False)

    def train_step(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal loss_fn, compiling
        obs, next_obs = (augment(batch.obs), augment(batch.next_obs)) if augment else (batch.obs, batch.next_obs)
        inputs = (obs, batch.actions, batch.rewards, next_obs, batch.discounts)
        if compiling:
            print("\ncompiling the update with torch.compile (once per process; 20-60 s on a CPU) ...", file=sys.stderr,
                  flush=True)
            started = time.time()
        try:  # the first call compiles, before anything of the step has run
            loss, q_mean = loss_fn(*inputs)
            if compiling:
                print(f"compiled in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        except Exception as error:  # e.g. no C++ compiler on the machine
            if not compiling:
                raise
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            print(f"warning: torch.compile failed ({type(error).__name__}: {reason}); training eagerly",
                  file=sys.stderr)
            loss_fn = td_loss
            loss, q_mean = loss_fn(*inputs)
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


# ---------------------------------------------------------------------------------------------------
# Acting, the replay-ratio schedule, the dormant-neuron check


def epsilon_at(args: Args, step: int) -> float:
    """Exploration epsilon at an agent step: linear from start-e to end-e over --epsilon-decay-steps, starting
    after the warm-up (Dopamine's ``linearly_decaying_epsilon``) or at step 0."""
    decay_start = args.learning_starts if args.epsilon_after_warmup else 0
    progress = min(1.0, max(0, step - decay_start) / args.epsilon_decay_steps)
    return args.start_e + (args.end_e - args.start_e) * progress


def act(q_network: QNetwork, obs: np.ndarray, epsilon: float, rng: np.random.Generator, device: torch.device) -> int:
    """Epsilon-greedy: a uniform random action with probability ``epsilon``, else the Q-network's argmax."""
    if rng.random() < epsilon:
        return int(rng.integers(q_network.n_actions))
    with torch.no_grad():
        return int(q_network(torch.as_tensor(obs, device=device)[None]).argmax(dim=1).item())


def gradient_steps_due(training_steps: int, replay_ratio: Fraction) -> int:
    """Gradient steps owed after ``training_steps`` agent steps past warm-up: exactly floor(steps * ratio)."""
    return training_steps * replay_ratio.numerator // replay_ratio.denominator


def check_dormant(q_network: QNetwork, optimizer: torch.optim.Optimizer, rb: FrameReplayBuffer, args: Args, writer,
                  step: int, recycle: bool, counters: Counters) -> float:
    """Scores the Q-network's neurons on a uniform replay sample and logs the dormant fractions at every tau, the
    overlap of fc1's --redo-tau-dormant set with the union of the earlier ones (``counters.fc1_dormant_before``,
    updated), the share of each layer's neurons --redo-tau-dormant at the last check that are so again
    (``counters.dormant_last_check``, updated), and srank of fc1's features on --srank-states other replay states;
    with ``recycle``, recycles the --redo-tau-dormant neurons, and everything logged is measured just before.
    Returns the total fraction at --redo-tau."""
    with torch.no_grad():
        writer.add_scalar("srank/fc1", srank(q_network.features(rb.sample(args.srank_states).obs)), step)
    states = rb.sample(args.redo_batch_size).obs
    if recycle:
        result = recycle_dormant(q_network, optimizer, states, tau=args.redo_tau,
                                 init_fn=QNetwork.weight_init(args.network))
        scores = result["scores"]
        for name, count in result["recycled"].items():
            writer.add_scalar(f"redo/recycled/{name}", count, step)
        writer.add_scalar("redo/recycled/total", sum(result["recycled"].values()), step)
    else:
        scores = dormant_scores(q_network, states)
    for tau in sorted({*DORMANT_TAUS, args.redo_tau}):
        for name, fraction in dormant_fractions(scores, tau).items():
            writer.add_scalar(f"dormant/tau={tau:g}/{name}", fraction, step)
    dormant = {name: score.cpu() <= args.redo_tau for name, score in scores.items()}
    writer.add_scalar("dormant/overlap/fc1", dormant_overlap(dormant["fc1"], counters.fc1_dormant_before), step)
    counters.fc1_dormant_before |= dormant["fc1"]
    # As the authors' debugging log (dead_intersected_percent): with ReDo, are the neurons recycled a period ago
    # dormant again?
    last = counters.dormant_last_check
    if last:
        again = {name: int((dormant[name] & last[name]).sum()) for name in dormant}
        before = {name: int(last[name].sum()) for name in dormant}
        for name in (name for name in dormant if before[name]):
            writer.add_scalar(f"dormant/again/{name}", again[name] / before[name], step)
        if sum(before.values()):
            writer.add_scalar("dormant/again/total", sum(again.values()) / sum(before.values()), step)
    counters.dormant_last_check = dormant
    return dormant_fractions(scores, args.redo_tau)["total"]


def evaluate(q_network: QNetwork, args: Args, device: torch.device, stop: StopSignal | None = None,
             on_step: Callable[[gym.Env, int, float, bool, bool], bool] | None = None, progress_path: str | None = None
             ) -> tuple[list[float], list[int], list[bool]]:
    """Full-game returns (unclipped, no life-loss terminals) of the epsilon-greedy policy at --eval-epsilon, the
    games' lengths in agent steps, and whether each was cut by the --max-episode-steps cap (a policy can stall in a
    loop that neither scores nor loses, and at epsilon 0.001 rarely leaves it); fewer than --eval-episodes if
    ``stop`` is signalled or ``on_step`` asks to end. ``on_step(env, action, reward, terminated, truncated)`` sees
    every step before a game's end resets the environment, and returns True to end the evaluation after it.

    With ``progress_path``, the games played so far are saved there after each one, and an evaluation of the same
    network at the same epsilon that finds the file goes on from it: it plays the games an unbroken one would."""
    env = make_env(args, evaluation=True)
    rng = np.random.default_rng(args.seed + 1)
    returns, lengths, at_cap, steps, tty, ended = [], [], [], 0, sys.stderr.isatty(), False
    obs, _ = env.reset(seed=args.seed + 1)
    network = network_fingerprint(q_network) if progress_path else ""
    saved = read_evaluation_progress(progress_path, network, args.eval_epsilon) if progress_path else None
    if saved is not None:
        returns, lengths, at_cap = (saved[key][:args.eval_episodes] for key in ("returns", "lengths", "at_cap"))
        restore_env_state(env, saved["env"])
        rng.bit_generator.state = saved["rng"]
        obs = saved["obs"].numpy().copy()
        print(f"continuing the evaluation after game {len(returns)}", file=sys.stderr)
    while len(returns) < args.eval_episodes and not ended and (stop is None or stop.signum is None):
        action = act(q_network, obs, args.eval_epsilon, rng, device)
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        ended = on_step is not None and on_step(env, action, float(reward), terminated, truncated)
        if terminated or truncated:
            returns.append(float(info["episode"]["r"]))
            lengths.append(steps)
            at_cap.append(bool(truncated))
            obs, _ = env.reset()
            steps = 0
            if progress_path:
                write_atomically(progress_path, {
                    "network": network, "epsilon": args.eval_epsilon, "returns": returns, "lengths": lengths,
                    "at_cap": at_cap, "env": env_state(env), "rng": rng.bit_generator.state,
                    "obs": torch.from_numpy(obs.copy())})
            line = (f"game {len(returns)}/{args.eval_episodes}: return {returns[-1]:.0f} in {lengths[-1]:,} steps"
                    f"{' (the cap)' if truncated else ''}, mean {np.mean(returns):.1f}")
            print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    if tty and returns:
        print(file=sys.stderr)
    env.close()
    return returns, lengths, at_cap


def network_fingerprint(q_network: nn.Module) -> str:
    """A hash of the network's weights in logical (NCHW) order: tells a saved evaluation's network from another."""
    digest = hashlib.sha256()
    for name, tensor in q_network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_evaluation_progress(path: str, network: str, epsilon: float) -> dict | None:
    """The games an interrupted evaluation saved at ``path``, if they are of this network and epsilon."""
    if not os.path.exists(path):
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as error:  # a file cut short by a crash: the games are played again
        print(f"warning: cannot read {path} ({type(error).__name__}); the evaluation starts over", file=sys.stderr)
        return None
    if saved["network"] != network or saved["epsilon"] != epsilon:
        print(f"{path} is of another network or epsilon; the evaluation starts over", file=sys.stderr)
        return None
    return saved


# ---------------------------------------------------------------------------------------------------
# Arguments and resume


def parse_command_line(argv: list[str] | None = None, prog: str | None = None) -> tuple[Args, dict | None]:
    """The arguments (``argv``, by default the command line's) and, with --resume, the checkpoint, read once. The
    defaults are --preset's (so that ``--preset drq-eps --help`` shows them), or with --resume the run's saved
    arguments: only what is given on the command line changes."""
    argv = sys.argv[1:] if argv is None else argv
    args = tyro.cli(Args, args=[arg for arg in argv if arg not in ("-h", "--help")], prog=prog)
    if args.resume is None:
        return tyro.cli(Args, args=argv, prog=prog, default=preset_args(args.preset)), None
    checkpoint, error = load_checkpoint(args.resume)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    saved = {key: value for key, value in checkpoint["args"].items() if key in Args.__dataclass_fields__}
    return tyro.cli(Args, args=argv, prog=prog, default=Args(**{**saved, "resume": args.resume})), checkpoint


def checked_arguments(args: Args, checkpoint: dict | None) -> dict | None:
    """The checkpoint to resume from (read here if the caller has not), once the arguments are checked, alone and
    against it. Anything wrong: a one-line error and exit 2, before anything is created."""
    error = argument_error(args)
    if error is None and args.resume is not None and checkpoint is None:
        checkpoint, error = load_checkpoint(args.resume)
    if error is None and checkpoint is not None:
        error = resume_mismatch(args, checkpoint)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    return checkpoint


def atari_env_ids() -> list[str]:
    return [env_id for env_id, spec in gym.registry.items() if "ale_py" in str(spec.entry_point)]


def env_id_error(env_id: str) -> str | None:
    ids = atari_env_ids()
    if env_id in ids:
        return None
    close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "try e.g. DemonAttack-v4 or ALE/DemonAttack-v5"
    return f"unknown Atari env id '{env_id}': {hint}"


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
    if args.eval_episodes < 0:
        return f"--eval-episodes must be >= 0, got {args.eval_episodes}"
    positive = ["total_timesteps", "max_episode_steps", "buffer_size", "batch_size", "target_network_frequency",
                "epsilon_decay_steps", "redo_interval", "redo_batch_size", "srank_states", "log_interval", "n_step"]
    for name in positive:
        if getattr(args, name) <= 0:
            return f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
    if not args.replay_ratio > 0:
        return f"--replay-ratio must be positive, got {args.replay_ratio}"
    if not args.redo_tau >= 0:
        return f"--redo-tau must be >= 0, got {args.redo_tau}"
    if args.redo_end_update is not None and args.redo_end_update <= 0:
        return f"--redo-end-update must be positive (leave it out to recycle to the end), got {args.redo_end_update}"
    if not (0 < args.learning_rate < math.inf):
        return f"--learning-rate must be positive and finite, got {args.learning_rate}"
    if not 0 <= args.gamma <= 1:
        return f"--gamma must be in [0, 1], got {args.gamma}"
    if not 0 <= args.sticky_actions <= 1:
        return f"--sticky-actions is a probability in [0, 1], got {args.sticky_actions}"
    if args.noop_max < 0:
        return f"--noop-max must be >= 0, got {args.noop_max}"
    if args.exp_name is not None and (not args.exp_name or os.sep in args.exp_name or "/" in args.exp_name
                                      or args.exp_name in (".", "..")):
        return f"--exp-name '{args.exp_name}' must be a plain name, without a path separator (runs go in runs/)"
    if not (0 <= args.end_e <= 1 and 0 <= args.start_e <= 1 and 0 <= args.eval_epsilon <= 1):
        return "--start-e, --end-e and --eval-epsilon must be in [0, 1]"
    warm_up_needed = max(args.batch_size, args.redo_batch_size)
    if args.learning_starts < warm_up_needed:
        return (f"--learning-starts ({args.learning_starts}) is shorter than a batch ({warm_up_needed} transitions: "
                "--batch-size and --redo-batch-size); raise it")
    if args.resume is None and args.total_timesteps <= args.learning_starts:
        return (f"--total-timesteps ({args.total_timesteps:,}) is not past --learning-starts "
                f"({args.learning_starts:,}): the run would never train; raise --total-timesteps or lower "
                "--learning-starts")
    if args.buffer_size < warm_up_needed:
        return f"--buffer-size ({args.buffer_size}) is smaller than a batch ({warm_up_needed}); raise it"
    error = env_id_error(args.env_id)
    if error:
        return error
    if args.track:
        error = wandb_error()
        if error:
            return error
    if args.capture_video and importlib.util.find_spec("moviepy") is None:
        return "--capture-video needs moviepy: pip install moviepy==2.2.1 (pinned in requirements.txt)"
    needed, available = FrameReplayBuffer.bytes_needed(args.buffer_size), available_memory_bytes()
    if available is not None and needed > 0.9 * available:
        return (f"--buffer-size {args.buffer_size:,} needs {needed / 2**30:.1f} GiB of memory but "
                f"{available / 2**30:.1f} GiB is available; lower --buffer-size")
    return None


def wandb_error() -> str | None:
    """Why --track cannot log, or None: wandb missing, or neither a login nor an offline mode."""
    if importlib.util.find_spec("wandb") is None:
        return "--track needs wandb: pip install wandb==0.31.0 (pinned in requirements.txt)"
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return None
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    if os.path.isfile(netrc):
        with open(netrc) as file:
            if "api.wandb.ai" in file.read():
                return None
    return ("--track needs a Weights & Biases login (run `wandb login`, or set WANDB_API_KEY), or WANDB_MODE=offline "
            "to log locally and `wandb sync` later")


def resume_mismatch(args: Args, checkpoint: dict) -> str | None:
    for key, value in checkpoint["args"].items():
        if key not in CHANGEABLE_ON_RESUME and getattr(args, key) != value:
            flag = f"--{key.replace('_', '-')}"
            return (f"cannot resume with {flag} {getattr(args, key)}: the run was made with {flag} {value} "
                    "(only --total-timesteps, logging, checkpointing, evaluation and speed options may change)")
    final_evaluation_due = args.eval_episodes and not os.path.exists(os.path.join(checkpoint["run_dir"], EVALUATED))
    if args.total_timesteps < checkpoint["global_step"] or (
            args.total_timesteps == checkpoint["global_step"] and not final_evaluation_due):
        return (f"--total-timesteps {args.total_timesteps:,} is not past the checkpoint's step "
                f"{checkpoint['global_step']:,}: the run is done up to there; pass a larger --total-timesteps to "
                "extend it")
    return None


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
        if isinstance(layer, gym.wrappers.RecordVideo):
            layer.recording = False  # the frames of a game being recorded are not saved: the next scheduled one is
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


def write_atomically(path: str, payload: dict) -> None:
    """torch.save through a temporary file, so that a crash leaves the old file or the new one, never half of one;
    on a disk error, a warning (what the file would have saved is played or computed again later)."""
    try:
        torch.save(payload, path + ".tmp")
        os.replace(path + ".tmp", path)
    except OSError as error:
        print(f"\nwarning: could not write {path} ({error})", file=sys.stderr)


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
            raise OSError(f"the replay buffer needs {needed / 2**30:.1f} GiB and the disk has {free / 2**30:.1f} GiB "
                          "free")
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


def save_run(args: Args, counters: Counters, progress: Progress, q_network: QNetwork, target_network: QNetwork,
             optimizer: torch.optim.Optimizer, env, rng: np.random.Generator, device: torch.device,
             rb: FrameReplayBuffer, run_dir: str, next_step: int, obs: np.ndarray) -> bool:
    """Saves everything the run needs to continue exactly from ``next_step`` (see :func:`restore_run`)."""
    return save_checkpoint({
        "args": dataclasses.asdict(args), "run_dir": run_dir, "global_step": next_step,
        "counters": {**dataclasses.asdict(counters), "last_return": progress.last_return,
                     "last_dormant": progress.last_dormant},
        "q_network": q_network.state_dict(), "target_network": target_network.state_dict(),
        "optimizer": optimizer.state_dict(), "env": env_state(env), "obs": torch.from_numpy(obs.copy()),
        "rng": rng_state(rng, device), "buffer": rb.state_dict() if args.checkpoint_buffer else None,
    }, run_dir)


def restore_run(checkpoint: dict, args: Args, counters: Counters, progress: Progress, q_network: QNetwork,
                target_network: QNetwork, optimizer: torch.optim.Optimizer, env, rng: np.random.Generator,
                device: torch.device, rb: FrameReplayBuffer) -> np.ndarray:
    """Puts the run back as :func:`save_run` saved it; returns the observation to act on."""
    q_network.load_state_dict(checkpoint["q_network"])
    target_network.load_state_dict(checkpoint["target_network"])
    load_optimizer_state(optimizer, checkpoint["optimizer"])
    restore_env_state(env, checkpoint["env"])
    saved = checkpoint["counters"]
    for field in dataclasses.fields(Counters):  # a checkpoint from before a field existed keeps its default
        setattr(counters, field.name, saved.get(field.name, getattr(counters, field.name)))
    progress.last_return, progress.last_dormant = saved["last_return"], saved["last_dormant"]
    restore_rng_state(checkpoint["rng"], rng, device)
    if checkpoint["buffer"] is not None:
        rb.load_state_dict(checkpoint["buffer"])
    else:  # refill the replay before training again; the schedules continue where they were
        counters.warmup_left = args.learning_starts
        print(f"the checkpoint has no replay buffer: refilling {args.learning_starts:,} steps before training")
    obs = checkpoint["obs"].numpy().copy()
    checkpoint.clear()  # frees the loaded copy of the replay, for the caller's reference too
    return obs


# ---------------------------------------------------------------------------------------------------
# Run guards: counters, signals, divergence, progress


@dataclass
class Counters:
    gradient_steps: int = 0
    training_steps: int = 0  # agent steps past the warm-up
    warmup_left: int = 0  # agent steps of warm-up still to play (again after a resume without saved replay)
    episode_steps: int = 0
    wandb_run_id: str = ""  # with --track: the W&B run a resume continues
    # fc1 neurons --redo-tau-dormant at any check so far (for dormant/overlap/fc1)
    fc1_dormant_before: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(512, dtype=torch.bool))
    # each layer's --redo-tau-dormant neurons at the last check, by layer (for dormant/again/*)
    dormant_last_check: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class StopSignal:
    """SIGINT/SIGTERM: the run finishes its step, saves a checkpoint and exits; the same signal again exits at once."""

    def __init__(self):
        self.signum: int | None = None
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\n{name} again: exiting now, without a checkpoint", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\n{name}: finishing this step and saving a checkpoint (send it again to exit at once)", file=sys.stderr)


class Diverged(Exception):
    pass


class DivergenceWatch:
    """The first gradient step whose loss or mean Q was not finite, kept on the device: no sync per step."""

    def __init__(self, gradient_steps: int, device: torch.device):
        self.step = torch.tensor(gradient_steps, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def watch(self, loss: torch.Tensor, q_mean: torch.Tensor) -> None:
        self.step += 1
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss + q_mean), self.step, self.first_bad)

    def check(self, global_step: int) -> None:
        """Raises Diverged (a sync point: call it where the run reads values anyway)."""
        bad = int(self.first_bad.item())
        if bad >= 0:
            raise Diverged(f"the TD loss or Q-values became NaN or infinite at gradient step {bad:,} "
                           f"(detected at agent step {global_step:,})")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """The progress line (every 2 s on a terminal, every minute in a log) and the SPS; speed and ETA count
    training steps only, once the fast warm-up is over."""

    def __init__(self, args: Args, start_step: int):
        self.args, self.start_step, self.start_time = args, start_step, time.time()
        self.last_time, self.last_step = self.start_time, start_step
        self.last_return, self.last_dormant = math.nan, math.nan

    def sps(self, global_step: int) -> int:
        return int((global_step - self.start_step) / (time.time() - self.start_time))

    def restart_clock(self, step: int) -> None:
        self.last_time, self.last_step = time.time(), step

    def update(self, global_step: int, epsilon: float, warming_up: bool) -> None:
        tty, last = sys.stderr.isatty(), global_step == self.args.total_timesteps - 1
        if time.time() - self.last_time <= (2 if tty else 60) and not last:
            return
        # Speed over the last print interval: the fast warm-up would make an average too optimistic.
        now = time.time()
        sps = (global_step + 1 - self.last_step) / max(now - self.last_time, 1e-6)
        self.restart_clock(global_step + 1)
        steps_left = self.args.total_timesteps - global_step - 1
        eta = "warming up" if warming_up else f"ETA {format_duration(steps_left / sps if steps_left else 0)}"
        # "-" until a game has ended and the first check has run (in the warm-up)
        last_return = "-" if math.isnan(self.last_return) else f"{self.last_return:.0f}"
        dormant = "-" if math.isnan(self.last_dormant) else f"{100 * self.last_dormant:.1f}%"
        line = (f"step {global_step + 1:,}/{self.args.total_timesteps:,} | {sps:.0f} SPS | eps {epsilon:.3f} | "
                f"return {last_return} | dormant(tau={self.args.redo_tau:g}) {dormant} | {eta}")
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Run folder, logging, the saved model


def start_wandb(args: Args, run_dir: str, checkpoint: dict | None) -> str:
    """Starts (or, on --resume, continues) the W&B run that mirrors this run's TensorBoard scalars; returns its id."""
    import wandb

    run_id = (checkpoint["counters"].get("wandb_run_id") if checkpoint else "") or None  # None: a new W&B run
    run = wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                     config=vars(args), name=os.path.basename(run_dir), id=run_id, resume="allow", save_code=True)
    return run.id


def cpu_name() -> str:
    """The CPU's model name (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    """The CPU model and core count (and the GPU), for figures that say where a run was made."""
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}"


def code_commit() -> str:
    """The git commit of this file's checkout ('+' if it has uncommitted changes), or 'unknown'."""
    folder = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *command: subprocess.run(["git", *command], cwd=folder, capture_output=True, text=True,
                                              timeout=10)
        commit = run("rev-parse", "--short", "HEAD")
        if commit.returncode != 0:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", os.path.basename(__file__), "redo.py")
        return commit.stdout.strip() + ("+" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_exp_name(args: Args) -> str:
    """<preset>_<baseline|redo>_rr<replay ratio>: tells a run's arms apart in TensorBoard's run list."""
    return f"{args.preset}_{'redo' if args.enable_redo else 'baseline'}_rr{args.replay_ratio:g}"


def new_run_dir(args: Args) -> str:
    run_name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    while os.path.exists(f"runs/{run_name}"):  # two runs started in the same second
        run_name += "_"
    return f"runs/{run_name}"


def print_setup(args: Args, run_dir: str, start_step: int, device: torch.device, resuming: bool) -> None:
    print(f"{'resuming' if resuming else 'run'} {run_dir} at step {start_step:,} on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"{args.preset} preset: {'dueling ' if args.dueling else ''}network {args.network}, {args.n_step}-step "
          f"{'double DQN' if args.double_dqn else 'DQN'}, augmentation {args.augmentation}, replay ratio "
          f"{args.replay_ratio:g}, ReDo {'on' if args.enable_redo else 'off'} (tau {args.redo_tau:g}, every "
          f"{args.redo_interval:,} updates" + (f", before update {args.redo_end_update:,}" if args.redo_end_update
                                               else "") + ")")
    print(f"{args.env_id}: sticky actions {args.sticky_actions:g}, "
          f"{'life loss terminal' if args.terminal_on_life_loss else 'full-game episodes'}, no-op reset "
          f"{args.noop_max}, FIRE reset {'on' if args.fire_reset else 'off'}, cap {args.max_episode_steps:,} steps; "
          f"epsilon {args.start_e:g} -> {args.end_e:g} over {args.epsilon_decay_steps:,} steps "
          f"{'after the warm-up' if args.epsilon_after_warmup else 'from step 0'}")
    print(f"allocating the replay buffer: {args.buffer_size:,} transitions, "
          f"{FrameReplayBuffer.bytes_needed(args.buffer_size) / 2**30:.2f} GiB")


def dashboard_layout(args: Args) -> dict:
    """TensorBoard's Custom Scalars tab: the signals that matter on one page (the usual tabs keep every tag)."""
    taus = sorted({*DORMANT_TAUS, args.redo_tau})
    return {"ReDo at a glance": {
        "dormant share of all hidden neurons, per tau": ["Multiline", [f"^dormant/tau={t:g}/total$" for t in taus]],
        f"dormant share per layer, tau = {args.redo_tau:g}": ["Multiline", [rf"^dormant/tau={args.redo_tau:g}/"]],
        "neurons recycled at each check (with --enable-redo)": ["Multiline", ["^redo/recycled/"]],
        "fc1: srank (Kumar et al.) of its features": ["Multiline", ["^srank/fc1$"]],
        "fc1: overlap of the dormant set with the earlier ones": ["Multiline", ["^dormant/overlap/fc1$"]],
        "dormant again: share of the last check's dormant (with ReDo: recycled) neurons": [
            "Multiline", ["^dormant/again/"]],
        "episodic return (training, full games)": ["Multiline", ["^charts/episodic_return$"]],
        "TD loss": ["Multiline", ["^losses/td_loss$"]],
    }}


def log_episode(writer, info: dict, counters: Counters, epsilon: float, step: int) -> float:
    """Logs a finished game (not a lost life); returns its score."""
    episodic_return = float(info["episode"]["r"])
    writer.add_scalar("charts/episodic_return", episodic_return, step)
    writer.add_scalar("charts/episodic_length", counters.episode_steps, step)  # agent steps
    writer.add_scalar("charts/epsilon", epsilon, step)
    counters.episode_steps = 0
    return episodic_return


def log_losses(writer, loss: torch.Tensor, q_mean: torch.Tensor, counters: Counters, sps: int, step: int) -> None:
    writer.add_scalar("losses/td_loss", loss.item(), step)
    writer.add_scalar("losses/q_values", q_mean.item(), step)
    writer.add_scalar("charts/SPS", sps, step)
    writer.add_scalar("charts/gradient_steps", counters.gradient_steps, step)


def save_model(q_network: QNetwork, args: Args, run_dir: str) -> None:
    model_path = f"{run_dir}/{args.exp_name}.pt"
    torch.save({"model": q_network.state_dict(), "args": dataclasses.asdict(args)}, model_path)  # weights-only
    print(f"model saved to {model_path}")


EVALUATED = "evaluation.json"  # in the run folder once the final evaluation is complete
EVALUATING = "evaluation.partial.pt"  # the games of an evaluation still going on, or interrupted


def evaluate_and_log(q_network: QNetwork, args: Args, writer, device: torch.device, run_dir: str,
                     stop: StopSignal) -> None:
    """The final evaluation, logged only once complete; an interrupted one goes on after its last finished game on
    --resume (the game it was playing is played again)."""
    print(f"evaluating: {args.eval_episodes} full games at epsilon {args.eval_epsilon:g}", file=sys.stderr)
    progress_path = os.path.join(run_dir, EVALUATING)
    returns, lengths, at_cap = evaluate(q_network, args, device, stop, progress_path=progress_path)
    if len(returns) < args.eval_episodes:
        print(f"evaluation interrupted after {len(returns)} of {args.eval_episodes} games; --resume goes on from there",
              file=sys.stderr)
        return
    for episode, (episodic_return, length) in enumerate(zip(returns, lengths)):
        writer.add_scalar("eval/episodic_return", episodic_return, episode)
        writer.add_scalar("eval/episodic_length", length, episode)
    with open(os.path.join(run_dir, EVALUATED), "w") as file:
        json.dump({"epsilon": args.eval_epsilon, "returns": returns, "lengths": lengths, "at_cap": at_cap}, file)
    if os.path.exists(progress_path):
        os.remove(progress_path)
    capped = f"; {sum(at_cap)} of them cut by the {args.max_episode_steps:,}-step cap" if any(at_cap) else ""
    print(f"evaluation over {len(returns)} episodes: mean return {np.mean(returns):.1f}{capped}")


# ---------------------------------------------------------------------------------------------------
# Training


def main(args: Args, checkpoint: dict | None = None) -> None:
    """Trains. ``checkpoint``: the one --resume names, if the caller has read it already."""
    checkpoint = checked_arguments(args, checkpoint)  # or a one-line error and exit 2, before anything is made
    args.exp_name = args.exp_name or default_exp_name(args)
    from torch.utils.tensorboard import SummaryWriter

    run_dir = checkpoint["run_dir"] if checkpoint else new_run_dir(args)
    start_step = checkpoint["global_step"] if checkpoint else 0
    wandb_run_id = start_wandb(args, run_dir, checkpoint) if args.track else ""  # before the writer it mirrors
    # purge_step drops what an interrupted run logged after its checkpoint: curves continue without duplicates.
    writer = SummaryWriter(run_dir, purge_step=start_step if checkpoint else None)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    logged = {**vars(args), "device (used)": device, "hardware": hardware(device), "commit": code_commit()}
    writer.add_text("hyperparameters" if checkpoint is None else f"resumed at step {start_step}",
                    "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in logged.items()), start_step)
    writer.add_custom_scalars(dashboard_layout(args))

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)
    print_setup(args, run_dir, start_step, device, resuming=checkpoint is not None)

    env = make_env(args, video_folder=f"videos/{os.path.basename(run_dir)}" if args.capture_video else None)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    q_network = QNetwork(env.action_space.n, args.network, args.dueling).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, eps=args.adam_eps,
                                 fused=args.fused_adam)
    target_network = QNetwork(env.action_space.n, args.network, args.dueling).to(device, memory_format=memory_format)
    target_network.load_state_dict(q_network.state_dict())
    rb = FrameReplayBuffer(args.buffer_size, 4, (84, 84), device, rng, args.n_step, args.gamma)
    train_step = make_train_step(q_network, target_network, optimizer, args.compile, args.double_dqn,
                                 drq_augment if args.augmentation == "drq" else None)

    obs, _ = env.reset(seed=args.seed)
    counters, progress = Counters(warmup_left=args.learning_starts), Progress(args, start_step)
    counters.wandb_run_id = wandb_run_id
    run = (args, counters, progress, q_network, target_network, optimizer, env, rng, device, rb)
    if checkpoint is not None:
        obs = restore_run(checkpoint, *run)
    divergence, stop = DivergenceWatch(counters.gradient_steps, device), StopSignal()
    updates_before = counters.gradient_steps
    replay_ratio = Fraction(str(args.replay_ratio))  # exact: 0.1 is 1/10, not 0.1000000000000000055
    exit_code, global_step = 0, start_step - 1
    try:
        for global_step in range(start_step, args.total_timesteps):
            # ALGO LOGIC: act, step the game, store the transition
            epsilon = epsilon_at(args, global_step)
            action = act(q_network, obs, epsilon, rng, device)
            next_obs, reward, terminated, truncated, info = env.step(action)
            rb.add(obs, action, float(np.clip(reward, -1.0, 1.0)), next_obs, terminated, truncated)
            obs = env.reset()[0] if terminated or truncated else next_obs
            counters.episode_steps += 1
            if "episode" in info:  # the real game ended, not just a life
                progress.last_return = log_episode(writer, info, counters, epsilon, global_step)

            # ALGO LOGIC: train after the warm-up, at the replay ratio; ReDo check; target sync
            if counters.warmup_left > 0:
                counters.warmup_left -= 1
                if counters.warmup_left == 0:  # the next speed and ETA count training steps only
                    progress.restart_clock(global_step + 1)
            else:
                if counters.training_steps == 0:  # the fractions at initialization, before any update
                    progress.last_dormant = check_dormant(q_network, optimizer, rb, args, writer, global_step, False,
                                                          counters)
                counters.training_steps += 1
                while counters.gradient_steps < gradient_steps_due(counters.training_steps, replay_ratio):
                    loss, q_mean = train_step(rb.sample(args.batch_size))
                    if counters.gradient_steps == updates_before:  # this process's first update, which compiles:
                        progress.restart_clock(global_step)  # the speed and ETA leave it out
                    divergence.watch(loss, q_mean)
                    counters.gradient_steps += 1
                    if counters.gradient_steps % args.log_interval == 0:
                        divergence.check(global_step)
                        log_losses(writer, loss, q_mean, counters, progress.sps(global_step), global_step)
                    if counters.gradient_steps % args.redo_interval == 0:
                        divergence.check(global_step)
                        recycle = args.enable_redo and counters.gradient_steps < (args.redo_end_update or math.inf)
                        progress.last_dormant = check_dormant(q_network, optimizer, rb, args, writer, global_step,
                                                              recycle, counters)
                if global_step % args.target_network_frequency == 0:
                    target_network.load_state_dict(q_network.state_dict())

            # TRY NOT TO MODIFY: checkpoint (on schedule or on a signal), progress
            due = args.checkpoint_interval and (global_step + 1) % args.checkpoint_interval == 0
            if stop.signum is not None or due:
                divergence.check(global_step)
                save_run(*run, run_dir, global_step + 1, obs)
            if stop.signum is not None:
                break
            progress.update(global_step, epsilon, warming_up=counters.warmup_left > 0)
        if stop.signum is None:
            print(file=sys.stderr)
            divergence.check(global_step)
            trained = global_step + 1 > start_step  # not only a resume to play the final evaluation
            if trained and args.checkpoint_interval and (global_step + 1) % args.checkpoint_interval != 0:
                save_run(*run, run_dir, global_step + 1, obs)  # so that the run can be extended
            if args.save_model:
                save_model(q_network, args, run_dir)
            if args.eval_episodes:
                evaluate_and_log(q_network, args, writer, device, run_dir, stop)
    except Diverged as error:
        print(f"\nerror: {error}; stopping without overwriting the last checkpoint in {run_dir}", file=sys.stderr)
        exit_code = 3
    env.close()
    writer.close()
    if args.track:
        import wandb

        wandb.finish(exit_code=exit_code)
    if stop.signum is not None and exit_code == 0:
        print(f"stopped at step {global_step + 1:,}; continue with: python {os.path.basename(__file__)} "
              f"--resume {run_dir}", file=sys.stderr)
        if not args.checkpoint_buffer:
            print(f"(the replay was not saved, as --checkpoint-buffer was off: the resumed run first plays "
                  f"{args.learning_starts:,} agent steps to refill it, counted in --total-timesteps, with epsilon "
                  "going on from where it is)", file=sys.stderr)
        exit_code = 128 + stop.signum
    elif exit_code == 0:
        dormant = "-" if math.isnan(progress.last_dormant) else f"{100 * progress.last_dormant:.1f} %"
        since = f" since the resume at step {progress.start_step:,}" if progress.start_step else ""
        print(f"done: {global_step + 1:,} agent steps ({counters.gradient_steps:,} updates) in "
              f"{format_duration(time.time() - progress.start_time)}{since}; dormant at tau={args.redo_tau:g}, "
              f"last check: {dormant}; logs and checkpoint in {run_dir}\n"
              f"  tensorboard --logdir {os.path.dirname(run_dir)}\n  python plot.py {run_dir}", file=sys.stderr)
    if exit_code:
        sys.exit(exit_code)


if __name__ == "__main__":
    main(*parse_command_line())
