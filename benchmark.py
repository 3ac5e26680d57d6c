"""Speed of dqn_redo.py on this machine: the update step, the whole training loop, replay sampling and ReDo.

    python benchmark.py                 # about 50 minutes on a 2-core CPU (both networks)
    python benchmark.py --quick         # fewer and shorter repeats, to try it out (about 10 minutes)
    python benchmark.py --agents drq-eps --networks dopamine    # DrQ(eps) only: its update, its loop at RR 1 and 8

The update step, acting, sampling and ReDo are timed in this process after a warm-up; each
whole-loop run is a fresh `python dqn_redo.py` process. Times are medians over repeats; ratios compare
medians measured in this same run, and the eager and fast training loops take turns so that a change
in the machine's speed hits both. Run it on an otherwise idle machine: another busy process changes
the figures.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import tyro

from dqn_redo import Batch, FrameReplayBuffer, QNetwork, cpu_name, drq_augment, make_train_step
from redo import dormant_fractions, dormant_scores, recycle_dormant, srank


@dataclass
class Args:
    quick: bool = False
    """fewer and shorter repeats"""
    buffer_size: int = 1_000_000
    """replay capacity for the sampling benchmark (filled with random frames)"""
    loop_steps: int = 4000
    """agent steps timed in each whole-loop run, after 2000 warm-up steps"""
    loop_repeats: int = 5
    """whole-loop runs per replay ratio and path, eager and fast taking turns"""
    networks: list[Literal["dopamine", "nature"]] = dataclasses.field(default_factory=lambda: ["dopamine", "nature"])
    """networks to measure: dopamine (the paper's, SAME padding, the default) and nature (VALID, CleanRL's)"""
    agents: list[Literal["dqn", "drq-eps"]] = dataclasses.field(default_factory=lambda: ["dqn", "drq-eps"])
    """agents to measure: dqn (the paper's DQN: --networks, RR 0.25 and 1) and drq-eps (--preset drq-eps: the
    dueling network, double DQN, augmentation; RR 1 and 8)"""
    loop_epsilon: float = 0.01
    """exploration epsilon of the whole-loop runs: 0.01 (default) as after the first 10 % of a default run,
    where nearly every step computes a greedy action; 1.0 as early in a run, where none does"""


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def random_batch(n: int = 32) -> Batch:
    frames = lambda: torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8)
    return Batch(frames(), torch.randint(0, 6, (n,)), torch.rand(n), frames(), torch.zeros(n), torch.full((n,), 0.99))


def build_update_step(network: str, compile: bool, channels_last: bool, fused_adam: bool,
                      drq: bool = False) -> Callable[[Batch], object]:
    """DQN's update, or with ``drq`` DrQ(eps)'s: dueling network, double DQN, augmentation of obs and next obs."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    q_network = QNetwork(6, network, dueling=drq).to(memory_format=memory_format)
    target_network = copy.deepcopy(q_network)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=6.25e-5, eps=1.5e-4, fused=fused_adam)
    return make_train_step(q_network, target_network, optimizer, compile, double_dqn=drq,
                           augment=drq_augment if drq else None)


def time_update_step(step: Callable[[Batch], object], batches: list[Batch], repeats: int) -> tuple[float, float]:
    """(median ms per update, seconds of the first call: the compile warm-up of a compiled step)."""
    start = time.perf_counter()
    step(batches[0])
    first_call = time.perf_counter() - start
    i = iter(range(10**9))
    return median_ms(lambda: step(batches[next(i) % len(batches)]), repeats), first_call


def arithmetic_share(eager_step: Callable[[Batch], object], fast_step: Callable[[Batch], object],
                     batches: list[Batch], repeats: int) -> tuple[float, float, float]:
    """(GFLOP per update; share of the (warmed-up) fast update's wall time spent in convolution and matmul
    kernels; those kernels' GFLOP/s). FLOPs are counted on the eager step, which does the same arithmetic;
    the profiler's own overhead lands outside the kernels, so the share is a lower bound."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        eager_step(batches[0])
    flops = counter.get_total_flops()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for i in range(repeats):
            fast_step(batches[i % len(batches)])
    wall = time.perf_counter() - start
    kernels = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::addmm", "aten::mm")
    kernel_s = sum(event.self_cpu_time_total for event in profiler.key_averages() if event.key in kernels) / 1e6
    return flops / 1e9, kernel_s / wall, repeats * flops / kernel_s / 1e9


def matmul_peak_gflops(n: int = 2048) -> float:
    """float32 GFLOP/s of one large square matmul: about as fast as this CPU multiplies."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_ms(lambda: a @ b, 10) / 1e6


def forward_macs(network: str) -> float:
    """Multiply-adds of one state's forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        QNetwork(6, network)(torch.zeros(1, 4, 84, 84, dtype=torch.uint8))
    return counter.get_total_flops() / 2


def whole_loop(network: str, replay_ratio: float, fast: bool, loop_steps: int, epsilon: float,
               preset: str = "dqn") -> float:
    """Agent steps per second of a real `python dqn_redo.py` run in its training phase (fixed epsilon), from
    its logged wall times. Each run is a fresh process, as a user's is: nothing this process did before
    (the allocator's state, compiled code, thread pools) changes its speed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    warmup = 2000
    speed_flags = [f"--{'' if fast else 'no-'}{flag}" for flag in ("compile", "channels-last", "fused-adam")]
    command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "dqn_redo.py"),
               "--total-timesteps", str(warmup + loop_steps), "--learning-starts", str(warmup),
               "--buffer-size", "20000", "--replay-ratio", str(replay_ratio), "--start-e", str(epsilon),
               "--end-e", str(epsilon), "--enable-redo", "--log-interval", "25", "--checkpoint-interval", "0",
               "--seed", "1", "--network", network, "--redo-batch-size", "64", "--preset", preset,
               "--eval-episodes", "0", *speed_flags]
    with tempfile.TemporaryDirectory() as folder:
        # Cold compile caches, as on a fresh machine (the warm-up is left out of the rate anyway).
        env = {**os.environ, "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
        run_dir = os.path.join(folder, "runs", os.listdir(os.path.join(folder, "runs"))[0])
        events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
        events.Reload()
        points = events.Scalars("charts/gradient_steps")
    # Windows between consecutive logs, leaving out the first quarter (compile warm-up).
    points = points[len(points) // 4 :]
    rates = [(b.step - a.step) / (b.wall_time - a.wall_time) for a, b in zip(points, points[1:])]
    return statistics.median(rates)


def main(args: Args) -> None:
    import torch._inductor.config

    if (not 0 <= args.loop_epsilon <= 1 or args.loop_steps < 100 or args.loop_repeats < 1 or args.buffer_size < 64
            or not args.networks or not args.agents):
        print("error: --loop-epsilon must be in [0, 1], --loop-steps >= 100, --loop-repeats >= 1, "
              "--buffer-size >= 64, and --networks and --agents name at least one each", file=sys.stderr)
        sys.exit(2)

    torch._inductor.config.force_disable_caches = True  # the compile warm-up a fresh machine sees
    repeats = 10 if args.quick else 40
    loop_steps = 1000 if args.quick else args.loop_steps
    rows = []
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    batches = [random_batch() for _ in range(8)]
    if "drq-eps" in args.agents:
        rows += drq_rows(args, batches, repeats)
    if "dqn" not in args.agents:
        print_rows(rows)
        return
    macs = {network: forward_macs(network) for network in args.networks}
    for network in args.networks:
        ratio = f"{macs[network] / macs['nature']:.2f}x nature" if "nature" in macs else ""
        rows.append((f"[{network}] forward multiply-adds per state", f"{macs[network] / 1e6:.0f} M", ratio))
    for network in args.networks:
        eager_step = build_update_step(network, False, False, False)
        fast_step = build_update_step(network, True, True, True)
        eager_ms, _ = time_update_step(eager_step, batches, repeats)
        channels_last_ms, _ = time_update_step(build_update_step(network, False, True, False), batches, repeats)
        fused_ms, _ = time_update_step(build_update_step(network, False, True, True), batches, repeats)
        fast_ms, compile_s = time_update_step(fast_step, batches, repeats)
        rows += [(f"[{network}] update step (batch 32), eager", f"{eager_ms:.1f} ms", "1.00x"),
                 (f"[{network}] update step, + channels_last", f"{channels_last_ms:.1f} ms",
                  f"{eager_ms / channels_last_ms:.2f}x"),
                 (f"[{network}] update step, + fused Adam", f"{fused_ms:.1f} ms", f"{eager_ms / fused_ms:.2f}x"),
                 (f"[{network}] update step, + compiled loss (default)", f"{fast_ms:.1f} ms",
                  f"{eager_ms / fast_ms:.2f}x"),
                 (f"[{network}] compile warm-up (first update)", f"{compile_s:.1f} s", "")]
        gflop, kernel_share, kernel_gflops = arithmetic_share(eager_step, fast_step, batches, repeats)
        rows.append((f"[{network}] fast update: time in convolution and matmul kernels",
                     f"{100 * kernel_share:.0f} %", f"{gflop:.2f} GFLOP at {kernel_gflops:.0f} GFLOP/s"))
    rows.append(("float32 matmul 2048 x 2048 (this CPU's arithmetic rate)", f"{matmul_peak_gflops():.0f} GFLOP/s", ""))

    network = args.networks[0]
    q_network = QNetwork(6, network).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=6.25e-5, eps=1.5e-4)
    obs = torch.randint(0, 256, (1, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        act_ms = median_ms(lambda: q_network(obs).argmax(dim=1).item(), repeats * 5)
    rows.append((f"[{network}] acting: Q-values of one state", f"{act_ms:.2f} ms", ""))

    rng = np.random.default_rng(0)
    buffer = FrameReplayBuffer(args.buffer_size, 4, (84, 84), torch.device("cpu"), rng)
    stacks = rng.integers(0, 256, (64, 4, 84, 84), dtype=np.uint8)
    first_obs = np.repeat(stacks[0, 3:], 4, axis=0)  # padded with its frame, as after a reset
    for i in range(args.buffer_size):  # episodes of 1000 steps
        obs_i = first_obs if i % 1000 == 0 else stacks[i % 64]
        buffer.add(obs_i, 0, 0.0, stacks[(i + 1) % 64], i % 1000 == 999, False)
    sample_ms = median_ms(lambda: buffer.sample(32), repeats * 5)
    rows.append((f"replay sample of 32 from {args.buffer_size:,} transitions", f"{sample_ms:.2f} ms",
                 ""))
    states = buffer.sample(64).obs
    del buffer

    scores_ms = median_ms(lambda: dormant_fractions(dormant_scores(q_network, states), 0.1), repeats)
    recycle_ms = median_ms(lambda: recycle_dormant(q_network, optimizer, states, tau=0.1), repeats)
    log_ms = median_ms(lambda: [dormant_fractions(dormant_scores(q_network, states), tau) for tau in (0, 0.025, 0.1)],
                       repeats)
    with torch.no_grad():
        srank_states = torch.randint(0, 256, (1024, 4, 84, 84), dtype=torch.uint8)
        srank_ms = median_ms(lambda: srank(q_network.features(srank_states)), max(3, repeats // 4))
    rows += [(f"[{network}] dormant scores + fractions (64 states)", f"{scores_ms:.1f} ms", ""),
             (f"[{network}] recycle_dormant (score + recycle, 64 states)", f"{recycle_ms:.1f} ms", ""),
             (f"[{network}] srank/fc1 (features of 1,024 states + SVD)", f"{srank_ms:.0f} ms", "")]

    loop = {}
    for network in args.networks:
        for replay_ratio in (0.25, 1.0):
            runs = {False: [], True: []}
            for _ in range(1 if args.quick else args.loop_repeats):
                for fast in (False, True):
                    runs[fast].append(whole_loop(network, replay_ratio, fast, loop_steps, args.loop_epsilon))
            for fast in (False, True):
                loop[network, replay_ratio, fast] = statistics.median(runs[fast])
            name = f"[{network}] whole loop, replay ratio {replay_ratio:g}, epsilon {args.loop_epsilon:g}"
            each = {fast: " (" + ", ".join(f"{rate:.0f}" for rate in runs[fast]) + ")" if len(runs[fast]) > 1 else ""
                    for fast in runs}
            eager, fast = loop[network, replay_ratio, False], loop[network, replay_ratio, True]
            rows += [(f"{name}, eager", f"{eager:.0f} steps/s{each[False]}", "1.00x"),
                     (f"{name}, fast (default)", f"{fast:.0f} steps/s{each[True]}", f"{fast / eager:.2f}x")]
    # At the default interval (1000 gradient steps), one recycle pass (scores included) and one dormant
    # log (fractions at three taus) per 1000 updates, i.e. per 1000 / ratio agent steps.
    network = args.networks[0]
    for replay_ratio in (0.25, 1.0):
        interval_s = (1000 / replay_ratio) / loop[network, replay_ratio, True]
        check_ms = recycle_ms + log_ms + srank_ms
        rows.append((f"[{network}] ReDo + dormant logging + srank, share of training time (RR {replay_ratio:g})",
                     f"{check_ms:.0f} ms per {interval_s:.0f} s", f"{100 * check_ms / 1000 / interval_s:.2f} %"))

    print_rows(rows)


def print_rows(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'measurement'.ljust(width)} | median | ratio |\n|{'-' * (width + 2)}|-|-|")
    for name, value, ratio in rows:
        print(f"| {name.ljust(width)} | {value} | {ratio} |")


def drq_rows(args: Args, batches: list[Batch], repeats: int) -> list[tuple[str, str, str]]:
    """DrQ(eps): the update eager and fast, the check's extra cost (srank on 1,024 states), the whole loop at
    replay ratios 1 and 8 (a fixed number of updates each: 1,000 in a full run), and the checks' share of it."""
    eager_ms, _ = time_update_step(build_update_step("dopamine", False, False, False, drq=True), batches, repeats)
    fast_ms, compile_s = time_update_step(build_update_step("dopamine", True, True, True, drq=True), batches, repeats)
    rows = [("[drq-eps] update step (dueling, double DQN, augmentation), eager", f"{eager_ms:.1f} ms", "1.00x"),
            ("[drq-eps] update step, fast (default)", f"{fast_ms:.1f} ms", f"{eager_ms / fast_ms:.2f}x"),
            ("[drq-eps] compile warm-up (first update)", f"{compile_s:.1f} s", "")]
    q_network = QNetwork(6, "dopamine", dueling=True).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4, eps=1.5e-4)
    states = torch.randint(0, 256, (1024, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        srank_ms = median_ms(lambda: srank(q_network.features(states)), max(3, repeats // 4))
        features = q_network.features(states)
    svd_only_ms = median_ms(lambda: srank(features), max(3, repeats // 4))
    check_ms = median_ms(lambda: [dormant_fractions(recycle_dormant(q_network, optimizer, states[:64], tau=0.1)[
        "scores"], tau) for tau in (0, 0.025, 0.1)], max(3, repeats // 4))
    rows += [("srank/fc1: fc1 features of 1,024 states + SVD (1,024 x 512)", f"{srank_ms:.0f} ms",
              f"SVD alone {svd_only_ms:.0f} ms"),
             ("[drq-eps] recycle + dormant fractions (64 states)", f"{check_ms:.0f} ms", "")]
    for replay_ratio in (1.0, 8.0):
        steps = max(100, round((250 if args.quick else 1000) / replay_ratio))
        runs = {False: [], True: []}
        for _ in range(1 if args.quick else min(3, args.loop_repeats)):
            for fast in (False, True):
                runs[fast].append(whole_loop("dopamine", replay_ratio, fast, steps, args.loop_epsilon, "drq-eps"))
        eager, fast = (statistics.median(runs[f]) for f in (False, True))
        each = {f: ", ".join(f"{rate:.1f}" for rate in runs[f]) for f in runs}
        name = f"[drq-eps] whole loop, replay ratio {replay_ratio:g}, epsilon {args.loop_epsilon:g}"
        rows += [(f"{name}, eager", f"{eager:.1f} steps/s ({each[False]})", "1.00x"),
                 (f"{name}, fast (default)", f"{fast:.1f} steps/s ({each[True]})", f"{fast / eager:.2f}x"),
                 (f"[drq-eps] 100k agent steps at replay ratio {replay_ratio:g}, fast", f"{1e5 / fast / 3600:.1f} h",
                  "")]
        interval_s = (1000 / replay_ratio) / fast  # one check per 1,000 updates
        rows.append((f"[drq-eps] check (srank, recycle, fractions): share of training time, RR {replay_ratio:g}",
                     f"{srank_ms + check_ms:.0f} ms per {interval_s:.0f} s",
                     f"{100 * (srank_ms + check_ms) / 1000 / interval_s:.2f} %"))
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
