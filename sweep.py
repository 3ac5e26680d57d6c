"""The paper's experiment as a grid of dqn_redo.py runs on Ray: games x seeds x replay ratios x arms.

    python sweep.py --env-ids DemonAttack-v4 Pong-v4 --seeds 1 2 3 --replay-ratios 0.25 1 -- --total-timesteps 2500000
    python sweep.py ... --ray-address auto          # on a Ray cluster: each run asks Ray for its CPUs (and GPU)
    python plot.py --sweep runs/sweep              # human-normalized IQM with rliable

Each cell runs `dqn_redo.py` as its own process in its own folder, `<out-dir>/<game>__rr<ratio>__<arm>__s<seed>`,
with `--checkpoint-buffer`, so that running the same command again skips finished cells (`done.json`) and
continues interrupted ones with `--resume` (identical to an uninterrupted run). A run whose process is killed
(a lost worker, an out-of-memory kill, a preempted node) is retried by Ray and resumes; a run that fails for a
reason of its own (bad arguments, divergence) is reported once, with its log's last lines, in `failed.json`,
and not retried (pass --retry-failed to try those again). Ctrl-C or SIGTERM stops the sweep cleanly: every
running run finishes its step and saves a checkpoint first (the same signal again exits at once). Arguments after
`--` go to every dqn_redo.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

ROOT = Path(__file__).resolve().parent
RESERVED = {"--env-id", "--seed", "--replay-ratio", "--enable-redo", "--no-enable-redo", "--exp-name", "--resume",
            "--torch-threads", "--checkpoint-buffer", "--cuda", "--no-cuda"}


@dataclass
class SweepArgs:
    env_ids: list[str] = field(default_factory=lambda: ["DemonAttack-v4"])
    """games; `atari100k` stands for the 26 games of the Atari 100k benchmark (plot.ATARI_100K_GAMES, as *-v4 ids)"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """seeds of every game, ratio and arm"""
    replay_ratios: list[float] = field(default_factory=lambda: [0.25])
    """replay ratios (gradient steps per agent step)"""
    arms: list[Literal["baseline", "redo"]] = field(default_factory=lambda: ["baseline", "redo"])
    """DQN alone, DQN + ReDo"""
    out_dir: str = "runs/sweep"
    """one folder per cell under it"""
    ray_address: str | None = None
    """a Ray cluster to use ("auto", or "ray://host:10001"); default: start Ray on this machine"""
    num_cpus: int | None = None
    """CPUs a Ray started here may use (e.g. 1 to keep a core free); default: all. Not with --ray-address"""
    cpus_per_run: int = 1
    """CPUs Ray reserves for each run; also its --torch-threads (so runs never oversubscribe the cores)"""
    gpus_per_run: float = 0.0
    """GPUs Ray reserves for each run (e.g. 1, or 0.5 to share one GPU between two runs); 0: CPU only"""
    max_retries: int = 3
    """times Ray restarts a run whose process or worker died, each time resuming from its checkpoint"""
    retry_failed: bool = False
    """run again the cells that failed for a reason of their own in an earlier sweep"""
    summary_interval: float = 60.0
    """seconds between summary lines"""


@dataclass(frozen=True)
class Cell:
    env_id: str
    replay_ratio: float
    arm: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.env_id.replace('/', '-')}__rr{self.replay_ratio:g}__{self.arm}__s{self.seed}"


def env_ids_of(args: SweepArgs) -> list[str]:
    from plot import ATARI_100K_GAMES

    return [env_id for name in args.env_ids
            for env_id in ([f"{game}-v4" for game in ATARI_100K_GAMES] if name == "atari100k" else [name])]


def cells_of(args: SweepArgs) -> list[Cell]:
    return [Cell(env_id, ratio, arm, seed) for env_id in env_ids_of(args) for ratio in args.replay_ratios
            for arm in args.arms for seed in args.seeds]


def run_folder(cell_dir: Path) -> Path | None:
    """The dqn_redo.py run folder a cell made, if any (a cell makes exactly one)."""
    runs = sorted((cell_dir / "runs").glob("*")) if (cell_dir / "runs").is_dir() else []
    return runs[0] if runs else None


def fresh_flags(cell: Cell, args: SweepArgs) -> list[str]:
    """The dqn_redo.py flags the sweep sets for a cell's fresh run (the arguments after -- follow them)."""
    flags = ["--env-id", cell.env_id, "--seed", str(cell.seed), "--replay-ratio", f"{cell.replay_ratio:g}",
             "--exp-name", f"rr{cell.replay_ratio:g}_{cell.arm}", "--torch-threads", str(args.cpus_per_run),
             "--checkpoint-buffer", "--cuda" if args.gpus_per_run > 0 else "--no-cuda"]
    return flags + ["--enable-redo"] if cell.arm == "redo" else flags


def grid_error(cells: list[Cell], args: SweepArgs, extra: list[str]) -> str | None:
    """What dqn_redo.py would refuse in a cell's fresh run (an unknown game, a replay ratio of 0, an argument after
    --), found with its own checks before Ray starts: else every cell would fail alike, each in its own folder."""
    import dqn_redo

    prog = "dqn_redo.py (the arguments after --)"  # tyro reports what does not parse, and exits with 2
    parsed, _ = dqn_redo.parse_command_line([*fresh_flags(cells[0], args), *extra], prog)
    for cell in dict.fromkeys(dataclasses.replace(cell, seed=cells[0].seed) for cell in cells):  # seeds: the same
        error = dqn_redo.argument_error(dataclasses.replace(parsed, env_id=cell.env_id, replay_ratio=cell.replay_ratio,
                                                            enable_redo=cell.arm == "redo"))
        if error is not None:
            return f"{cell.name}: {error}"
    return None


def command(cell: Cell, cell_dir: Path, args: SweepArgs, extra: list[str]) -> list[str]:
    """The dqn_redo.py command for a cell: a resume if it has a checkpoint, else a fresh run."""
    run = run_folder(cell_dir)
    if run is not None and ((run / "checkpoint.pt").exists() or (run / "checkpoint.prev.pt").exists()):
        return [sys.executable, str(ROOT / "dqn_redo.py"), "--resume", str(run.resolve()), *extra]
    if run is not None:  # killed before its first checkpoint: start over, keeping its logs aside
        (cell_dir / "aborted").mkdir(exist_ok=True)
        run.rename(cell_dir / "aborted" / f"{run.name}.{int(time.time())}")
    return [sys.executable, str(ROOT / "dqn_redo.py"), *fresh_flags(cell, args), *extra]


def _die_with_parent() -> None:
    """In the run's process: get SIGTERM if the Ray worker dies, so the run saves a checkpoint and stops instead of
    running on unseen beside its retry."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Interrupted(Exception):
    """The run's process was killed by a signal: Ray retries the task, which resumes from the checkpoint."""


STOP_FILE = ".stop"
"""Made in --out-dir when the sweep is asked to stop: each run_cell then stops its run, which saves a checkpoint.
A file, not a Ray call, because the task must outlive the request: ray.cancel would resolve the task at once and
let Ray shut down while the runs are still writing their checkpoints."""


def run_cell(cell: Cell, cell_dir: str, args: SweepArgs, extra: list[str]) -> dict:
    """Runs (or resumes) one cell to its end, or until the sweep stops (its run saves a checkpoint first). Returns
    its outcome: `cell`, `exit_code` (None if it never started) and `stopped`; a stopped one also has `saved_at`
    (the step of the checkpoint it wrote, None if none). Raises Interrupted if the process was killed from outside."""
    folder = Path(cell_dir)
    stop_file = folder.parent / STOP_FILE
    if stop_file.exists():  # still queued when the sweep was stopped
        return {"cell": dataclasses.asdict(cell), "exit_code": None, "stopped": True, "saved_at": None}
    folder.mkdir(parents=True, exist_ok=True)
    cmd = command(cell, folder, args, extra)
    stopping = False
    with open(folder / "log.txt", "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        start = log.tell()
        # Its own session, so that a Ctrl-C in the sweep's terminal reaches the sweep alone, which stops each run
        # once: dqn_redo.py takes a second signal as "exit at once, without a checkpoint".
        process = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent,
                                   env={**os.environ, "OMP_NUM_THREADS": str(args.cpus_per_run)})
        while True:
            try:
                code = process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if not stopping and stop_file.exists():
                    process.send_signal(signal.SIGTERM)  # it finishes its step, saves a checkpoint and exits
                    stopping = True
    if stopping and code != 0:
        with open(folder / "log.txt", "rb") as log:
            log.seek(start)
            saved = re.findall(rb"stopped at step ([\d,]+);", log.read())  # none if stopped before its first step
        return {"cell": dataclasses.asdict(cell), "exit_code": code, "stopped": True,
                "saved_at": int(saved[-1].replace(b",", b"")) if saved else None}
    if code < 0 or code in (128 + 9, 128 + 15, 128 + 2):  # killed, or stopped by a signal after a checkpoint
        raise Interrupted(f"{cell.name}: dqn_redo.py was stopped by a signal ({code}); resuming")
    outcome = {"cell": dataclasses.asdict(cell), "exit_code": code, "stopped": False, "command": cmd}
    if code != 0:
        outcome["log_tail"] = (folder / "log.txt").read_text().splitlines()[-15:]
    (folder / ("done.json" if code == 0 else "failed.json")).write_text(json.dumps(outcome, indent=1))
    return outcome


def outcome_line(cell: Cell, outcome: dict) -> str:
    """What the sweep prints when a cell's task returns (run_cell's outcome); nothing for a cell that never started."""
    if outcome["stopped"]:
        if outcome["saved_at"] is not None:
            return f"stopped {cell.name}: checkpoint at step {outcome['saved_at']:,}"
        if outcome["exit_code"] is None:
            return ""
        return f"stopped {cell.name} while it was starting: its last checkpoint stands"
    if outcome["exit_code"] == 0:
        return f"done    {cell.name}"
    tail = "\n        ".join(outcome["log_tail"][-5:])
    return f"failed  {cell.name} (exit {outcome['exit_code']}):\n        {tail}"


def progress_of(cell_dir: Path) -> tuple[int, int | None]:
    """Agent steps a cell has made and its run's length, from the last progress line of its log ("step N/T");
    (0, None) before the first one."""
    found, tail = [], 4000
    try:
        with open(cell_dir / "log.txt", "rb") as log:
            size = log.seek(0, 2)
            while not found:  # the final evaluation's lines can push the last progress line far back
                log.seek(max(0, size - tail))
                found = re.findall(rb"step ([\d,]+)/([\d,]+)", log.read())
                if tail >= size:
                    break
                tail *= 16
    except OSError:
        pass
    return tuple(int(n.replace(b",", b"")) for n in found[-1]) if found else (0, None)


def eta(running: list[tuple[int, int | None]], length: int | None, speed: float) -> str:
    """Hours the unfinished cells (their progress_of) need at `speed` agent steps per second. A cell without a
    progress line yet counts as `length`, the longest of the sweep's runs: the runs' own progress lines are the
    reliable source of their length, since a preset can set it."""
    if length is None or speed <= 0:
        return "?"
    return f"{sum((own or length) - steps for steps, own in running) / speed / 3600:.1f} h"


def extra_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Splits the command line at `--`: the sweep's own flags, and those passed to every dqn_redo.py."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def main(args: SweepArgs, extra: list[str]) -> int:
    reserved = [flag for flag in extra if flag.split("=")[0] in RESERVED]
    if reserved:
        print(f"error: {reserved[0]} is set by the sweep for each cell; use --env-ids, --seeds, --replay-ratios, "
              "--arms, --cpus-per-run or --gpus-per-run", file=sys.stderr)
        return 2
    if args.cpus_per_run < 1 or args.gpus_per_run < 0 or not (args.env_ids and args.seeds and args.replay_ratios
                                                             and args.arms):
        print("error: the grid is empty, or --cpus-per-run < 1 or --gpus-per-run < 0", file=sys.stderr)
        return 2
    if args.num_cpus is not None and (args.num_cpus < args.cpus_per_run or args.ray_address is not None):
        print("error: --num-cpus must be at least --cpus-per-run, and only starts a Ray on this machine (a cluster's "
              "CPUs are set by `ray start --num-cpus`)", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    cells = cells_of(args)
    error = grid_error(cells, args, extra)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import ray

    todo, skipped = [], {"done": 0, "failed": 0}
    for cell in cells:
        cell_dir = out_dir / cell.name
        if (cell_dir / "done.json").exists():
            skipped["done"] += 1
        elif (cell_dir / "failed.json").exists() and not args.retry_failed:
            skipped["failed"] += 1
        else:
            (cell_dir / "failed.json").unlink(missing_ok=True)
            todo.append(cell)
    print(f"sweep: {len(cells)} cells in {out_dir}: {skipped['done']} done, {skipped['failed']} failed earlier "
          f"(--retry-failed to rerun), {len(todo)} to run")
    if not todo:
        return 1 if skipped["failed"] else 0

    # On a cluster, every node must see this folder and --out-dir at the same paths (a shared file system).
    stop_file = out_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)  # left by a sweep that was killed outright
    ray.init(address=args.ray_address, num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    stop_signals: list[int] = []

    def request_stop(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if stop_signals:
            print(f"\n{name} again: exiting now; runs still saving a checkpoint may lose it", file=sys.stderr)
            os._exit(128 + signum)
        stop_signals.append(signum)
        out_dir.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
        print(f"\n{name}: every running run finishes its step and saves a checkpoint; the same command continues "
              "them (send it again to exit at once)", flush=True)

    signal.signal(signal.SIGINT, request_stop)  # after ray.init, which installs handlers of its own
    signal.signal(signal.SIGTERM, request_stop)
    remote = ray.remote(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run, max_retries=args.max_retries,
                        retry_exceptions=[Interrupted])(run_cell)
    pending = {remote.remote(cell, str((out_dir / cell.name).resolve()), args, extra): cell for cell in todo}
    failed, stopped, start, last_summary = skipped["failed"], 0, time.time(), time.time()
    first_steps = sum(progress_of(out_dir / cell.name)[0] for cell in todo)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(args.summary_interval, 10.0))
        for ref in ready:
            cell = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as error:  # retries used up
                print(f"failed  {cell.name}: {type(error).__name__}: {str(error).splitlines()[-1][:300]}", flush=True)
                failed += 1
                continue
            if outcome["stopped"]:
                stopped += 1
            elif outcome["exit_code"] != 0:
                failed += 1
            if line := outcome_line(cell, outcome):
                print(line, flush=True)
        if time.time() - last_summary >= args.summary_interval or not pending:
            last_summary = time.time()
            progress = {cell: progress_of(out_dir / cell.name) for cell in todo}
            speed = (sum(steps for steps, _ in progress.values()) - first_steps) / max(time.time() - start, 1e-6)
            length = max((own for _, own in progress.values() if own), default=None)
            left = eta([progress[cell] for cell in pending.values()], length, speed)
            done = len(todo) - len(pending) - (failed - skipped["failed"]) - stopped
            print(f"summary: {skipped['done'] + done} done, {len(pending)} running or queued, {failed} failed | "
                  f"{speed:.0f} agent steps/s in total | ETA {left}", flush=True)
    ray.shutdown()
    if stop_signals:
        stop_file.unlink(missing_ok=True)
        print(f"stopped: {stopped} cells not finished, each kept at its last checkpoint; run the same command to "
              "continue them", flush=True)
        return 128 + stop_signals[0]
    return 1 if failed else 0


if __name__ == "__main__":
    own, extra = extra_flags(sys.argv[1:])
    sys.exit(main(tyro.cli(SweepArgs, args=own), extra))
