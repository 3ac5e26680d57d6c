"""Checkpoints: exact resume, signals, divergence, disk errors, mismatched arguments."""

import errno
import io
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
import torch

import dqn_redo
from dqn_redo import Args, env_state, load_checkpoint, make_env, restore_env_state, save_checkpoint
from test_dqn import ROOT, only_run, run_script, scalars, start_script

shutil_usage = namedtuple("usage", "total used free")

SMALL = ["--learning-starts", "200", "--buffer-size", "1000", "--replay-ratio", "0.5", "--redo-interval", "20",
         "--log-interval", "10", "--enable-redo", "--no-compile", "--checkpoint-buffer", "--seed", "4",
         "--redo-batch-size", "64", "--batch-size", "8", "--srank-states", "128"]  # small batches: a fast suite


# DrQ(eps): n-step windows, augmentation draws, dueling heads, life-loss terminals and no-op starts resume exactly too.
DRQ = ["--preset", "drq-eps", "--eval-episodes", "0"]


@pytest.mark.seconds(85)
@pytest.mark.parametrize("preset", [[], DRQ], ids=["dqn", "drq-eps"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, preset):
    (tmp_path / "full").mkdir()
    (tmp_path / "part").mkdir()
    one_core = ["--torch-threads", "1", *preset]  # the uninterrupted run goes on beside the others, one core each
    full = start_script(tmp_path / "full", *SMALL, *one_core, "--total-timesteps", "600", "--checkpoint-interval", "0")
    # Stopped at 301 (in the middle of the replay-ratio schedule), resumed, killed without a later
    # checkpoint (simulated: the step-301 one is put back), and resumed again.
    part = run_script(tmp_path / "part", *SMALL, *one_core, "--total-timesteps", "301", "--checkpoint-interval", "1000")
    assert part.returncode == 0, part.stderr[-2000:]
    run_dir = only_run(tmp_path / "part")
    kept = (run_dir / "checkpoint.pt").read_bytes()
    crashed = run_script(tmp_path / "part", "--resume", str(run_dir), "--total-timesteps", "450")
    assert crashed.returncode == 0, crashed.stderr[-2000:]
    (run_dir / "checkpoint.pt").write_bytes(kept)
    resumed = run_script(tmp_path / "part", "--resume", str(run_dir), "--total-timesteps", "600")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert only_run(tmp_path / "part") == run_dir  # the same run folder
    _, full_stderr = full.communicate(timeout=240)
    assert full.returncode == 0, full_stderr[-2000:]
    expected, got = scalars(only_run(tmp_path / "full")), scalars(run_dir)
    for tag in ["losses/td_loss", "losses/q_values", "dormant/tau=0.1/total", "dormant/tau=0/fc1",
                "dormant/overlap/fc1", "dormant/again/total", "dormant/again/fc1", "srank/fc1", "redo/recycled/total",
                "charts/gradient_steps", "charts/SPS"]:
        # No duplicates: what the killed process logged after step 301 is purged.
        assert [step for step, _ in got[tag]] == [step for step, _ in expected[tag]], tag
        if tag != "charts/SPS":
            assert got[tag] == expected[tag], tag
    assert len(expected["losses/td_loss"]) == 20 and len(expected["redo/recycled/total"]) == 10


@pytest.mark.seconds(20)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_loadable_checkpoint_and_exits_cleanly(tmp_path, signum):
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "dqn_redo.py"), *SMALL, "--total-timesteps", "100000", "--checkpoint-interval",
         "250"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.2)  # the first checkpoint, at step 250, is past the 200 warm-up steps: training has begun
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err[-2000:]
    assert f"{signal.Signals(signum).name}: finishing this step" in err
    assert "continue with: python dqn_redo.py --resume" in err
    assert "Traceback" not in err
    run_dir = only_run(tmp_path)
    checkpoint, error = load_checkpoint(str(run_dir))
    assert error is None and 0 < checkpoint["global_step"] < 100000
    step = checkpoint["global_step"]
    resumed = run_script(tmp_path, "--resume", str(run_dir), "--total-timesteps", str(step + 20))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {step:,}" in resumed.stdout


@pytest.mark.seconds(16)
def test_a_second_signal_exits_at_once_without_a_checkpoint(tmp_path):
    big = [flag if flag != "1000" else "200000" for flag in SMALL]  # a 1.4 GB replay: a checkpoint takes seconds
    process = subprocess.Popen([sys.executable, str(ROOT / "dqn_redo.py"), *big, "--total-timesteps", "100000",
                                "--checkpoint-interval", "100"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.1)  # the loop runs: the signal handlers are in place
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)  # inside the checkpoint the first signal asked for
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, err[-2000:]
    assert "SIGINT again: exiting now, without a checkpoint" in err
    checkpoint, error = load_checkpoint(str(only_run(tmp_path)))  # the last complete one, intact
    assert error is None and checkpoint["global_step"] % 100 == 0


@pytest.mark.seconds(14)
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # No log or ReDo check before step 400: the divergence is first seen by the periodic checkpoint there,
    # which must not be written; the step-200 one (warm-up, before any update) stays the newest.
    result = run_script(tmp_path, *SMALL, "--learning-rate", "1e30", "--total-timesteps", "2000",
                        "--checkpoint-interval", "200", "--log-interval", "10000", "--redo-interval", "10000")
    assert result.returncode == 3
    assert "NaN or infinite at gradient step" in result.stderr and "(detected at agent step 399)" in result.stderr
    checkpoint, error = load_checkpoint(str(only_run(tmp_path)))
    assert error is None and checkpoint["global_step"] == 200
    assert all(torch.isfinite(p).all() for p in checkpoint["q_network"].values())


@pytest.mark.seconds(24)
def test_resume_with_incompatible_arguments_is_rejected(tmp_path):
    result = run_script(tmp_path, *SMALL, "--total-timesteps", "220", "--checkpoint-interval", "220")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = only_run(tmp_path)
    before = sorted(os.listdir(run_dir))
    for flags, message in [(["--env-id", "Pong-v4"], "--env-id Pong-v4: the run was made with --env-id DemonAttack-v4"),
                           (["--replay-ratio", "2"], "--replay-ratio"),
                           (["--total-timesteps", "220"], "is not past the checkpoint's step 220")]:
        rejected = run_script(tmp_path, "--resume", str(run_dir), *flags, timeout=60)
        assert rejected.returncode == 2 and message in rejected.stderr
        assert len(rejected.stderr.strip().splitlines()) == 1
    missing = run_script(tmp_path, "--resume", str(tmp_path / "nowhere"), timeout=60)
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
    assert sorted(os.listdir(run_dir)) == before


def test_disk_error_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    assert save_checkpoint({"global_step": 1}, str(tmp_path))
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def full_disk(obj, file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dqn_redo.torch, "save", full_disk)
    assert not save_checkpoint({"global_step": 2}, str(tmp_path))
    assert "No space left on device" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_a_replay_larger_than_the_free_disk_space_is_not_written(tmp_path, monkeypatch, capsys):
    assert save_checkpoint({"global_step": 1}, str(tmp_path))
    good = (tmp_path / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(dqn_redo.shutil, "disk_usage", lambda path: shutil_usage(total=10**12, used=10**12, free=10))
    buffer = {"frames": torch.zeros(1000, dtype=torch.uint8)}
    assert not save_checkpoint({"global_step": 2, "buffer": buffer}, str(tmp_path))
    assert "the replay buffer needs 0.0 GiB and the disk has 0.0 GiB free" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == good and sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


@pytest.mark.parametrize("env_id", ["DemonAttack-v4", "ALE/DemonAttack-v5"])
def test_env_state_restores_the_game_exactly(env_id):
    rng = np.random.default_rng(0)
    actions = rng.integers(6, size=3000)
    env = make_env(Args(env_id=env_id))
    env.reset(seed=0)
    for action in actions[:300]:
        _, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            env.reset()
    file = io.BytesIO()
    torch.save(env_state(env), file)  # through a file, as in a checkpoint: plain types only
    file.seek(0)
    saved = torch.load(file, weights_only=True)

    def play(e):
        trace = []
        for action in actions[300:]:
            obs, reward, terminated, truncated, info = e.step(int(action))
            episode = info.get("episode")  # its "t" is wall-clock time
            trace.append((obs.tobytes(), reward, terminated, truncated, episode and (episode["r"], episode["l"])))
            if terminated or truncated:
                obs, _ = e.reset()
                trace.append(obs.tobytes())
        return trace

    expected = play(env)
    other = make_env(Args(env_id=env_id))
    other.reset(seed=123)
    restore_env_state(other, saved)
    assert play(other) == expected
    assert any(isinstance(t, bytes) for t in expected)  # an episode (life) ended along the way
    assert any(t[4] for t in expected if isinstance(t, tuple))  # and a whole game


@pytest.mark.seconds(19)
def test_resume_without_saved_replay_refills_and_goes_on(tmp_path):
    # The game resumes in the middle of an episode while the replay restarts empty.
    flags = [f for f in SMALL if f != "--checkpoint-buffer"]
    first = run_script(tmp_path, *flags, "--total-timesteps", "250", "--checkpoint-interval", "250")
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = only_run(tmp_path)
    checkpoint, _ = load_checkpoint(str(run_dir))
    assert checkpoint["buffer"] is None and checkpoint["counters"]["gradient_steps"] == 25
    resumed = run_script(tmp_path, "--resume", str(run_dir), "--total-timesteps", "500")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "refilling 200 steps before training" in resumed.stdout
    checkpoint, _ = load_checkpoint(str(run_dir))
    # 200 refill steps without updates, then 50 training steps at replay ratio 0.5.
    assert checkpoint["global_step"] == 500 and checkpoint["counters"]["gradient_steps"] == 25 + 25


class Payload:
    def __reduce__(self):
        return (os.mkdir, ("payload-ran",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"args": {}, "global_step": 1, "q_network": Payload()}, run_dir / "checkpoint.pt")
    checkpoint, error = load_checkpoint(str(run_dir))
    assert checkpoint is None and "was refused" in error and "\n" not in error
    assert not (tmp_path / "payload-ran").exists()
    result = run_script(tmp_path, "--resume", str(run_dir), timeout=60)
    assert result.returncode == 2 and "was refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "payload-ran").exists()
    with pytest.raises(pickle.UnpicklingError):  # what a plain load would have run, for contrast
        torch.load(run_dir / "checkpoint.pt", weights_only=True)


@pytest.mark.seconds(46)
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    result = run_script(tmp_path, *SMALL, "--total-timesteps", "300", "--checkpoint-interval", "100")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = only_run(tmp_path)
    assert sorted(p.name for p in run_dir.glob("checkpoint*")) == ["checkpoint.prev.pt", "checkpoint.pt"]
    previous, _ = load_checkpoint(str(run_dir / "checkpoint.prev.pt"))
    assert previous["global_step"] == 200
    newest = run_dir / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    resumed = run_script(tmp_path, "--resume", str(run_dir), "--total-timesteps", "320")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from the previous checkpoint" in resumed.stderr and "(step 200)" in resumed.stderr
    assert "at step 200" in resumed.stdout
    both_bad = run_dir / "checkpoint.prev.pt"
    both_bad.write_bytes(b"garbage")
    newest.write_bytes(b"garbage")
    failed = run_script(tmp_path, "--resume", str(run_dir), "--total-timesteps", "400", timeout=60)
    assert failed.returncode == 2 and "the previous one cannot be used either" in failed.stderr
