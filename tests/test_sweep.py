"""sweep.py on a local Ray instance, and plot.py --sweep against hand-computed statistics."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

import plot
import sweep as sweep_module
from sweep import Cell, SweepArgs, cells_of, extra_flags
from test_dqn import ROOT

TINY = ["--total-timesteps", "400", "--learning-starts", "300", "--buffer-size", "1000", "--redo-batch-size", "64",
        "--redo-interval", "20", "--no-compile", "--checkpoint-interval", "100", "--batch-size", "8",
        "--srank-states", "128"]


def sweep(out_dir: Path, *flags: str, extra=TINY, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--out-dir", str(out_dir), "--summary-interval",
                           "5", *flags, "--", *extra], capture_output=True, text=True, timeout=timeout,
                          env=os.environ)


def runs_in(folder: Path) -> list[int]:
    """The dqn_redo.py processes working in ``folder``: a cell's run, whose command line names no folder until it
    resumes."""
    pids = subprocess.run(["pgrep", "-f", "dqn_redo.py"], capture_output=True, text=True).stdout.split()
    running = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/cwd").resolve() == folder.resolve():
                running.append(int(pid))
        except OSError:  # it ended meanwhile
            pass
    return running


def test_grid_and_folder_names_are_one_to_one():
    args = SweepArgs(env_ids=["Pong-v4", "ALE/Breakout-v5"], seeds=[1, 2], replay_ratios=[0.25, 1.0],
                     arms=["baseline", "redo"])
    cells = cells_of(args)
    assert len(cells) == 16 and len({cell.name for cell in cells}) == 16
    assert Cell("ALE/Breakout-v5", 0.25, "redo", 2).name == "ALE-Breakout-v5__rr0.25__redo__s2"
    assert extra_flags(["--seeds", "1", "--", "--total-timesteps", "5"]) == (["--seeds", "1"],
                                                                             ["--total-timesteps", "5"])
    # The Atari 100k grid of the paper's Fig. 10d: 26 games x 4 replay ratios x 2 arms x 10 seeds.
    grid = cells_of(SweepArgs(env_ids=["atari100k"], seeds=list(range(1, 11)), replay_ratios=[1, 2, 4, 8]))
    assert len(grid) == 26 * 4 * 2 * 10 == len({cell.name for cell in grid})
    assert "PrivateEye-v4__rr8__redo__s10" in {cell.name for cell in grid}


@pytest.mark.slow
@pytest.mark.seconds(60)
def test_tiny_sweep_runs_skips_and_reports_failures(tmp_path):
    """Both arms of a game end to end (the grid's other dimensions: test_grid_and_folder_names_are_one_to_one); again
    (nothing to do); a failing cell is reported once and not retried."""
    out = tmp_path / "sweep"
    grid = ["--env-ids", "Breakout-v4", "--seeds", "1", "--replay-ratios", "0.5"]
    first = sweep(out, *grid)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    cells = sorted(path.name for path in out.iterdir())
    assert cells == ["Breakout-v4__rr0.5__baseline__s1", "Breakout-v4__rr0.5__redo__s1"]
    assert all((out / cell / "done.json").exists() for cell in cells)
    assert first.stdout.count("done    ") == 2 and "summary: 2 done, 0 running or queued, 0 failed" in first.stdout

    again = sweep(out, *grid)
    assert again.returncode == 0 and "2 done, 0 failed earlier" in again.stdout and "to run" in again.stdout
    assert "0 to run" in again.stdout
    mtimes = {p: p.stat().st_mtime for p in out.rglob("events.out.tfevents*")}
    assert mtimes and all(p.stat().st_mtime == t for p, t in mtimes.items())  # nothing rerun or overwritten

    diverging = [*TINY, "--learning-rate", "1e30"]  # a failure of the run's own: its arguments pass every check
    failing = sweep(out / "bad", "--env-ids", "Pong-v4", "--seeds", "1", "--arms", "redo", extra=diverging)
    assert failing.returncode == 1 and "failed  Pong-v4__rr0.25__redo__s1 (exit 3)" in failing.stdout
    assert "NaN or infinite at gradient step" in failing.stdout
    assert json.loads((out / "bad" / "Pong-v4__rr0.25__redo__s1" / "failed.json").read_text())["exit_code"] == 3
    once_more = sweep(out / "bad", "--env-ids", "Pong-v4", "--seeds", "1", "--arms", "redo", extra=diverging)
    assert once_more.returncode == 1 and "1 failed earlier" in once_more.stdout and "0 to run" in once_more.stdout


@pytest.mark.slow
@pytest.mark.seconds(75)
def test_tiny_sweep_resumes_a_killed_run_and_continues_after_a_stop(tmp_path):
    """A cell killed mid-run is retried by Ray and resumes; a stopped sweep continues at the step it stopped."""
    out = tmp_path / "sweep"
    # A cell whose process dies mid-run is retried by Ray and resumes from its checkpoint; then a Ctrl-C stops the
    # sweep, whose run saves a checkpoint at the step it was at, and running the sweep again continues from there.
    extra = [flag if flag != "400" else "1000" for flag in TINY]
    one_cell = ["--env-ids", "Pong-v4", "--seeds", "7", "--arms", "baseline"]
    process = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "--out-dir", str(out / "kill"), *one_cell,
                                "--", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    cell_dir = out / "kill" / "Pong-v4__rr0.25__baseline__s7"

    def wait_for(condition):
        deadline = time.time() + 240
        while not condition() and time.time() < deadline:
            time.sleep(0.2)
        assert condition(), os.killpg(process.pid, signal.SIGKILL) or process.stdout.read()[-3000:]

    wait_for(lambda: list(cell_dir.glob("runs/*/checkpoint.pt")))
    child = runs_in(cell_dir)
    assert len(child) == 1, child
    os.kill(child[0], signal.SIGKILL)  # the run dies at once, without a last checkpoint
    wait_for(lambda: "resuming" in (cell_dir / "log.txt").read_text())
    checkpoint = next(cell_dir.glob("runs/*/checkpoint.pt"))
    written = checkpoint.stat().st_mtime
    wait_for(lambda: checkpoint.stat().st_mtime != written)  # the resumed run is training
    os.killpg(process.pid, signal.SIGINT)  # a Ctrl-C in the sweep's terminal reaches its whole process group
    stopped = process.communicate(timeout=400)[0]
    assert process.returncode == 128 + signal.SIGINT, stopped[-3000:]
    step = stopped.split("stopped Pong-v4__rr0.25__baseline__s7: checkpoint at step ")[1].split()[0]
    assert "1 cells not finished" in stopped
    log = (cell_dir / "log.txt").read_text()
    assert log.count("$ ") == 2 and "--resume" in log.split("$ ")[2]  # killed: retried; stopped: not
    assert f"stopped at step {step};" in log
    assert not (cell_dir / "done.json").exists() and not (out / "kill" / ".stop").exists()
    assert not runs_in(cell_dir)

    finished = sweep(out / "kill", *one_cell, extra=extra)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    log = (cell_dir / "log.txt").read_text()
    assert log.count("$ ") == 3 and f"at step {step} on" in log.split("$ ")[3]  # nothing played twice
    assert (cell_dir / "done.json").exists()


def test_progress_and_eta_come_from_the_runs_own_progress_lines(tmp_path):
    (tmp_path / "log.txt").write_text("$ dqn_redo.py --preset drq-eps\nstep 1,000/100,000 | 9 SPS\n"
                                      "step 20,000/100,000 | 10 SPS | eps 0.010\n")
    assert sweep_module.progress_of(tmp_path) == (20_000, 100_000)
    assert sweep_module.progress_of(tmp_path / "not-started") == (0, None)
    with open(tmp_path / "log.txt", "a") as log:  # a final evaluation's lines, many KB of them (once: 0 steps)
        log.write("".join(f"game {n}/100: return 7 in 1,784 steps, mean 9.8\n" for n in range(1, 101)))
    assert sweep_module.progress_of(tmp_path) == (20_000, 100_000)
    # 80,000 steps left in the started cell, 100,000 in one not started: 180,000 at 10 steps/s is 5 hours.
    assert sweep_module.eta([(20_000, 100_000), (0, None)], 100_000, 10.0) == "5.0 h"
    assert sweep_module.eta([(0, None)], None, 10.0) == "?" and sweep_module.eta([(0, None)], 5, 0.0) == "?"


@pytest.mark.parametrize("grid, extra, message", [
    ({"replay_ratios": [0.0]}, TINY, "Pong-v4__rr0__baseline__s1: --replay-ratio must be positive, got 0.0"),
    ({"env_ids": ["NotAGame-v4"]}, TINY, "NotAGame-v4__rr0.25__baseline__s1: unknown Atari env id 'NotAGame-v4'"),
    ({}, [*TINY, "--gamma", "2"], "Pong-v4__rr0.25__baseline__s1: --gamma must be in [0, 1], got 2.0"),
    ({}, ["--preset", "drq-eps", "--total-timesteps", "1000"],
     "--total-timesteps (1,000) is not past --learning-starts"),
])
def test_what_every_cell_would_refuse_is_a_one_line_error_before_ray_starts(tmp_path, capsys, grid, extra, message):
    """Once each cell started, failed alike and left a folder; now the sweep checks the cells' arguments with
    dqn_redo.py's own checks (a preset's defaults included) before Ray starts, and creates nothing."""
    args = SweepArgs(**{"env_ids": ["Pong-v4"], "seeds": [1, 2], "out_dir": str(tmp_path / "out"), **grid})
    assert sweep_module.main(args, extra) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and not out
    assert not (tmp_path / "out").exists()


def test_flags_the_sweep_sets_are_refused(tmp_path):
    result = sweep(tmp_path, extra=["--seed", "3"], timeout=60)
    assert result.returncode == 2 and "--seed is set by the sweep" in result.stderr
    for flags in (["--num-cpus", "1", "--cpus-per-run", "2"], ["--num-cpus", "2", "--ray-address", "auto"]):
        result = sweep(tmp_path, *flags, timeout=60)
        assert result.returncode == 2 and "--num-cpus must be" in result.stderr and not list(tmp_path.iterdir())


# A stand-in for dqn_redo.py: counts SIGTERMs (a second one would make the real script exit without a checkpoint),
# and on the first one prints what dqn_redo.py prints after saving its checkpoint, then exits with 128 + 15.
FAKE_RUN = """
import signal, sys, time
terms = []
def on_term(signum, frame):
    terms.append(signum)
    print(f"SIGTERMs: {len(terms)}", flush=True)
    if len(terms) == 1:
        time.sleep(1.5)  # writing the checkpoint, while run_cell keeps polling the stop file
        print("stopped at step 1,234; continue with: ...", flush=True)
        sys.exit(128 + signum)
signal.signal(signal.SIGTERM, on_term)
print("running", flush=True)
time.sleep(60)
"""


def once_it_runs(cell_dir: Path, then) -> threading.Thread:
    """Starts a thread that calls `then` once the stand-in has printed its "running" line: its handler is in place
    then. That line, not the command line in front of it in log.txt, which holds the same word and, on a loaded
    machine, is there before the process exists (a kill then found nothing to kill)."""
    def wait_and_act():
        deadline, log = time.time() + 30, cell_dir / "log.txt"
        while "running" not in (log.read_text().splitlines() if log.exists() else []):
            assert time.time() < deadline
            time.sleep(0.1)
        then()
    thread = threading.Thread(target=wait_and_act)
    thread.start()
    return thread


def test_run_cell_stops_its_run_once_and_reports_the_checkpoint_step(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "command", lambda *_: [sys.executable, "-c", FAKE_RUN])
    cell, cell_dir = Cell("Pong-v4", 1.0, "redo", 1), tmp_path / "Pong-v4__rr1__redo__s1"
    args = SweepArgs(out_dir=str(tmp_path))
    stopper = once_it_runs(cell_dir, (tmp_path / sweep_module.STOP_FILE).touch)
    outcome = sweep_module.run_cell(cell, str(cell_dir), args, [])
    stopper.join()
    assert outcome["stopped"] and outcome["exit_code"] == 128 + 15 and outcome["saved_at"] == 1234
    assert sweep_module.outcome_line(cell, outcome) == "stopped Pong-v4__rr1__redo__s1: checkpoint at step 1,234"
    log = (cell_dir / "log.txt").read_text()
    assert "running" in log and "SIGTERMs: 1" in log and "SIGTERMs: 2" not in log
    assert not (cell_dir / "done.json").exists() and not (cell_dir / "failed.json").exists()
    # Stopped while still loading (SIGTERM's default action ends it): no new checkpoint, whatever the log said before.
    (tmp_path / sweep_module.STOP_FILE).unlink()
    monkeypatch.setattr(sweep_module, "command", lambda *_: [sys.executable, "-c", "import time; time.sleep(60)"])
    timer = threading.Timer(1.0, (tmp_path / sweep_module.STOP_FILE).touch)
    timer.start()
    outcome = sweep_module.run_cell(cell, str(cell_dir), args, [])
    timer.join()
    assert outcome["stopped"] and outcome["exit_code"] == -15 and outcome["saved_at"] is None
    assert sweep_module.outcome_line(cell, outcome) == ("stopped Pong-v4__rr1__redo__s1 while it was starting: its "
                                                        "last checkpoint stands")
    # Queued when the sweep stopped: it does not start, and the sweep has nothing to say about it (a sweep stopped
    # with queued cells once died here on a missing key, after its runs had saved).
    queued = sweep_module.run_cell(cell, str(tmp_path / "queued"), args, [])
    assert queued == {"cell": dataclasses.asdict(cell), "exit_code": None, "stopped": True, "saved_at": None}
    assert not (tmp_path / "queued").exists() and sweep_module.outcome_line(cell, queued) == ""


def test_a_finished_cell_is_reported_done_or_failed_with_its_log_tail(tmp_path, monkeypatch):
    cell, args = Cell("Pong-v4", 1.0, "baseline", 2), SweepArgs(out_dir=str(tmp_path))
    monkeypatch.setattr(sweep_module, "command", lambda *_: [sys.executable, "-c", "print('finished')"])
    done = sweep_module.run_cell(cell, str(tmp_path / "done"), args, [])
    assert done["exit_code"] == 0 and not done["stopped"] and (tmp_path / "done" / "done.json").exists()
    assert sweep_module.outcome_line(cell, done) == "done    Pong-v4__rr1__baseline__s2"
    monkeypatch.setattr(sweep_module, "command", lambda *_: [
        sys.executable, "-c", "import sys; print('\\n'.join(f'line {i}' for i in range(9))); sys.exit(2)"])
    failed = sweep_module.run_cell(cell, str(tmp_path / "failed"), args, [])
    assert failed["exit_code"] == 2 and not failed["stopped"] and (tmp_path / "failed" / "failed.json").exists()
    assert sweep_module.outcome_line(cell, failed) == ("failed  Pong-v4__rr1__baseline__s2 (exit 2):\n        " +
                                                       "\n        ".join(f"line {i}" for i in range(4, 9)))


def test_run_cell_hands_a_run_killed_from_outside_to_ray_for_a_retry(tmp_path, monkeypatch):
    cell, cell_dir = Cell("Pong-v4", 1.0, "redo", 1), tmp_path / "cell"
    # Its folder in its command line, so that only this test's run is killed, not another test's stand-in beside it.
    monkeypatch.setattr(sweep_module, "command", lambda *_: [sys.executable, "-c", FAKE_RUN, str(cell_dir)])

    def kill_the_run():
        pids = subprocess.run(["pgrep", "-f", str(cell_dir)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)

    killer = once_it_runs(cell_dir, kill_the_run)
    with pytest.raises(sweep_module.Interrupted, match="stopped by a signal"):
        sweep_module.run_cell(cell, str(cell_dir), SweepArgs(out_dir=str(tmp_path)), [])
    killer.join()
    assert not (cell_dir / "done.json").exists() and not (cell_dir / "failed.json").exists()


# ---------------------------------------------------------------- aggregation


def fake_run(folder: Path, env_id: str, redo: bool, returns: list[float], dormant: list[float]) -> None:
    writer = SummaryWriter(str(folder))
    table = "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in {
        "env_id": env_id, "replay_ratio": 1.0, "enable_redo": redo, "redo_tau": 0.1}.items())
    writer.add_text("hyperparameters", table, 0)
    for i, (value, fraction) in enumerate(zip(returns, dormant)):
        writer.add_scalar("charts/episodic_return", value, 1000 * (i + 1))
        writer.add_scalar("dormant/tau=0.1/total", fraction, 1000 * (i + 1))
    writer.close()


def test_sweep_aggregation_matches_hand_computed_iqm_and_normalized_scores(tmp_path, capsys):
    rng = np.random.default_rng(0)
    games = {"Pong-v4": (-20.7, 14.6), "DemonAttack-v4": (152.1, 1971.0)}
    finals = {}
    for arm in ("baseline", "redo"):
        for env_id, (random_score, human_score) in games.items():
            for seed in range(4):
                final = float(rng.uniform(random_score, human_score))
                finals[(arm, env_id, seed)] = final
                fake_run(tmp_path / f"{arm}_{env_id}_{seed}", env_id, arm == "redo",
                         [random_score] * 8 + [final, final], [0.5] * 10)
    plot.main(plot.Args(paths=[str(tmp_path)], out_dir=str(tmp_path / "figures"), sweep=True, bins=10,
                        bootstrap_samples=200))
    out = capsys.readouterr().out
    for arm, name in (("baseline", "DQN, RR 1"), ("redo", "DQN + ReDo (tau=0.1), RR 1")):
        normalized = np.array([[(finals[(arm, env_id, seed)] - r) / (h - r) for env_id, (r, h) in sorted(games.items())]
                               for seed in range(4)])  # (runs, games), games in sorted order as plot.py uses
        flat = np.sort(normalized.flatten())  # 8 scores: the IQM is the mean of the middle 4
        line = next(line for line in out.splitlines() if line.startswith(f"| {name} | 4 |"))
        assert f"| {flat[2:6].mean():.3f} [" in line and f"| {normalized.mean():.3f} [" in line, line
    assert (tmp_path / "figures" / "sweep_return.png").exists()
    assert (tmp_path / "figures" / "sweep_dormant.png").exists()
    pong = finals[("redo", "Pong-v4", 0)]
    assert "| Pong-v4 | DQN + ReDo (tau=0.1), RR 1 | 4 |" in out and f"{pong:.0f}" in out


def test_one_run_per_game_gives_no_interval_and_says_the_iqm_of_three_scores_is_their_mean(tmp_path, capsys):
    games = {"Pong-v4": (-20.7, 14.6), "DemonAttack-v4": (152.1, 1971.0), "Boxing-v4": (0.1, 12.1)}
    finals = {"Pong-v4": -10.0, "DemonAttack-v4": 1500.0, "Boxing-v4": 30.0}
    for arm in ("baseline", "redo"):
        for env_id, final in finals.items():
            fake_run(tmp_path / f"{arm}_{env_id}", env_id, arm == "redo", [final] * 3, [0.5] * 3)
    plot.main(plot.Args(paths=[str(tmp_path)], out_dir=str(tmp_path / "figures"), sweep=True, bins=3,
                        bootstrap_samples=50))
    out = capsys.readouterr().out
    normalized = [(finals[g] - r) / (h - r) for g, (r, h) in games.items()]
    line = next(line for line in out.splitlines() if line.startswith("| DQN, RR 1 | 1 |"))
    # rliable's stratified bootstrap has nothing to resample: a zero-width "[x, x]" would read as certainty.
    assert line == (f"| DQN, RR 1 | 1 | {np.mean(normalized):.3f} (no interval: 1 run per game) | "
                    f"{np.mean(normalized):.3f} (no interval: 1 run per game) |")
    assert "nothing to resample" in out and "With 3 scores in all, the IQM" in out
    assert "drops none: here it is the mean" in out
    assert "| game | algorithm | runs | return, last 10%: mean (per run) | HNS |" in out


def test_a_game_without_reference_scores_is_a_clear_error(tmp_path, capsys):
    fake_run(tmp_path / "a", "Tetris-v4", False, [1.0] * 3, [0.1] * 3)
    with pytest.raises(SystemExit) as exit_info:
        plot.main(plot.Args(paths=[str(tmp_path)], sweep=True, bins=3, bootstrap_samples=50))
    assert exit_info.value.code == 2
    assert "no random/human reference score for Tetris-v4" in capsys.readouterr().err


def test_a_game_one_arm_has_not_run_is_named_in_a_clear_error(tmp_path, capsys):
    for env_id in ("Pong-v4", "Boxing-v4"):
        fake_run(tmp_path / f"baseline_{env_id}", env_id, False, [1.0] * 3, [0.1] * 3)
    fake_run(tmp_path / "redo_Boxing-v4", "Boxing-v4", True, [1.0] * 3, [0.1] * 3)
    with pytest.raises(SystemExit) as exit_info:
        plot.main(plot.Args(paths=[str(tmp_path)], sweep=True, bins=3, bootstrap_samples=50))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "none of Pong-v4 (DQN + ReDo (tau=0.1), RR 1): pass only the games every arm has run" in err
    assert "Boxing-v4 (" not in err


def test_runs_without_a_final_evaluation_are_all_named_when_scoring_by_evaluation(tmp_path, capsys):
    for name in ("evaluated", "running_a", "running_b"):
        fake_run(tmp_path / name, "Pong-v4", False, [-20.0] * 3, [0.2] * 3)
    writer = SummaryWriter(str(tmp_path / "evaluated"))
    writer.add_scalar("eval/episodic_return", -19.0, 0)
    writer.close()
    with pytest.raises(SystemExit) as exit_info:
        plot.main(plot.Args(paths=[str(tmp_path)], sweep=True, bins=3, bootstrap_samples=50, score="evaluation"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "2 of 3 runs have no final evaluation yet" in err
    assert "running_a" in err and "running_b" in err and "evaluated" not in err


def test_a_cell_killed_before_its_first_checkpoint_starts_over_and_keeps_its_logs(tmp_path):
    from sweep import command

    partial = tmp_path / "runs" / "Pong-v4__rr0.25_redo__1__123"
    partial.mkdir(parents=True)
    (partial / "events.out.tfevents.1").write_text("partial")
    cmd = command(Cell("Pong-v4", 0.25, "redo", 1), tmp_path, SweepArgs(), ["--total-timesteps", "400"])
    assert "--resume" not in cmd and "--enable-redo" in cmd and cmd[-2:] == ["--total-timesteps", "400"]
    assert not list((tmp_path / "runs").iterdir())
    (kept,) = (tmp_path / "aborted").iterdir()
    assert (kept / "events.out.tfevents.1").read_text() == "partial"
    (tmp_path / "runs" / "resumable").mkdir()
    (tmp_path / "runs" / "resumable" / "checkpoint.prev.pt").write_text("")
    assert command(Cell("Pong-v4", 0.25, "redo", 1), tmp_path, SweepArgs(), [])[2:4] == ["--resume", str(
        (tmp_path / "runs" / "resumable").resolve())]


def test_runs_without_a_finished_game_are_named_and_the_dormant_curves_still_drawn(tmp_path, capsys):
    fake_run(tmp_path / "a", "Pong-v4", False, [-20.0] * 3, [0.2] * 3)
    writer = SummaryWriter(str(tmp_path / "b"))  # an early look at a run whose first game has not ended
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n|env_id|Pong-v4|\n|replay_ratio|1.0|\n"
                    "|enable_redo|True|\n|redo_tau|0.1|", 0)
    for i in range(3):
        writer.add_scalar("dormant/tau=0.1/total", 0.05, 1000 * (i + 1))
    writer.close()
    plot.main(plot.Args(paths=[str(tmp_path)], out_dir=str(tmp_path / "figures"), sweep=True, bins=3,
                        bootstrap_samples=50))
    out = capsys.readouterr().out
    assert "not drawn: human-normalized return (charts/episodic_return), which 1 of 2 runs have not logged yet" in out
    assert os.path.relpath(tmp_path / "b") in out
    assert (tmp_path / "figures" / "sweep_dormant.png").exists()
    assert not (tmp_path / "figures" / "sweep_return.png").exists()


def test_final_evaluation_scores_and_the_atari_100k_reference_table(tmp_path, capsys):
    assert len(plot.ATARI_100K_GAMES) == 26 and set(plot.ATARI_100K_GAMES) <= set(plot.ATARI_RANDOM_HUMAN)
    assert plot.ATARI_RANDOM_HUMAN["PrivateEye"] == (24.9, 69571.3)  # DRQ-FACTS / dqn_zoo's atari_data.py
    for arm in ("baseline", "redo"):
        folder = tmp_path / arm
        fake_run(folder, "Krull-v4", arm == "redo", [1598.0] * 3, [0.2] * 3)
        writer = SummaryWriter(str(folder))
        for game, value in enumerate([2665.5, 1598.0] if arm == "redo" else [1598.0, 1598.0]):
            writer.add_scalar("eval/episodic_return", value, game)
        writer.close()
        if arm == "redo":
            (folder / "evaluation.json").write_text(json.dumps({"at_cap": [False, True]}))
    plot.main(plot.Args(paths=[str(tmp_path)], out_dir=str(tmp_path / "figures"), sweep=True, bins=3,
                        bootstrap_samples=50, score="evaluation"))
    out = capsys.readouterr().out
    assert "A run's score: the mean return of its final evaluation." in out
    assert "| DQN + ReDo (tau=0.1), RR 1 | 1 | 0.500 (no" in out  # (2665.5 + 1598) / 2 is half-way to human
    assert "| DQN, RR 1 | 1 | 0.000 (no" in out
    assert "| final evaluation: mean (per run) | HNS | evaluation games cut by the cap (per run) |" in out
    assert "| 0.500 | 1 |" in out and "| 0.000 | ? |" in out  # ReDo's second game was cut; the baseline's unknown


# ---------------------------------------------------------------- the committed results


def test_readme_final_evaluations_of_the_multi_game_run_are_what_its_committed_files_hold():
    """Each per-game table of the multi-game run in the README (header "| <Game>, RR 1, seed 1, ... | baseline | ReDo
    |") quotes mean, standard error, median and HNS of the 100 evaluation games, and the games cut by the cap: they
    are recomputed here from the evaluation.json files committed in results/drq_sweep. An arm the README calls "not
    finished" must have no committed evaluation, so the README cannot lag behind a result that has landed."""
    readme = (ROOT / "README.md").read_text()
    tables = re.findall(r"^\| (\w+), RR 1, seed 1, by 10k agent steps \| baseline \| ReDo \|\n((?:\|.*\n)+)", readme,
                        re.MULTILINE)
    arm_cell = r"(\*\*.+?\*\*|not finished)"
    checked = []
    for game, rows in tables:
        quoted = re.search(rf"^\| \*\*final evaluation, 100 games: mean \(standard error\), median\*\* \| "
                           rf"{arm_cell} \| {arm_cell} \|$", rows, re.MULTILINE)
        capped = re.search(r"^\| evaluation games cut by the 27,000-step cap \| (\d+\b|not finished).*? \| "
                           r"(\d+\b|not finished)", rows, re.MULTILINE)
        assert quoted and capped, f"{game}: the README table lacks its final-evaluation or cap row"
        for arm, text, cut in zip(("baseline", "redo"), quoted.groups(), capped.groups()):
            files = list((ROOT / "results" / "drq_sweep" / f"{game}-v4__rr1__{arm}__s1").glob("runs/*/evaluation.json"))
            if text == "not finished":
                assert cut == "not finished" and not files, f"{game} {arm}: committed, but the README says not finished"
                continue
            assert len(files) == 1, f"{game} {arm}: expected one committed evaluation.json, found {len(files)}"
            evaluation = json.loads(files[0].read_text())
            returns = np.array(evaluation["returns"])
            assert len(returns) == 100
            computed = (f"**{returns.mean():.1f} ({returns.std(ddof=1) / np.sqrt(len(returns)):.1f}), "
                        f"{np.median(returns):g}; HNS {plot.human_normalized(returns.mean(), game + '-v4'):.2f}**")
            assert text == computed, f"{game} {arm}: the README says {text!r}, its files give {computed!r}"
            assert int(cut) == sum(evaluation["at_cap"])
            checked.append((game, arm))
    finished = {(game, arm) for game in ("Boxing", "Breakout", "Pong") for arm in ("baseline", "redo")}
    assert set(checked) >= finished  # the cells finished when this test was last changed
