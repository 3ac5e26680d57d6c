"""CleanRL's conventions: --track (Weights & Biases, offline here), --capture-video, and redo.py installed with pip."""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dqn_redo
from dqn_redo import Args, argument_error
from test_dqn import ROOT, only_run, run_script, scalars, start_script

SHORT = ["--env-id", "Pong-v4", "--learning-starts", "500", "--buffer-size", "2000", "--redo-batch-size", "64",
         "--srank-states", "64", "--log-interval", "10", "--redo-interval", "50", "--no-compile", "--seed", "3",
         "--batch-size", "8"]


def offline_env(tmp_path: Path) -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}


@pytest.mark.seconds(38)
def test_track_offline_mirrors_the_config_and_scalars_and_a_resume_continues_the_same_wandb_run(tmp_path):
    env = offline_env(tmp_path)
    command = [sys.executable, str(ROOT / "dqn_redo.py"), *SHORT, "--track", "--wandb-project-name", "redo-test"]
    first = subprocess.run([*command, "--total-timesteps", "700"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run(tmp_path)
    second = subprocess.run([sys.executable, str(ROOT / "dqn_redo.py"), "--resume", str(run_dir), "--total-timesteps",
                             "1500"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    offline_runs = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*")))
    assert len(offline_runs) == 2 and len({path.rsplit("-", 1)[1] for path in offline_runs}) == 1  # one W&B run id
    for offline_run in offline_runs:
        # wandb >= 0.19 keeps an offline run's config and history in its binary transaction log, for `wandb sync`:
        # the records are protobufs, whose keys and string values appear in it as bytes.
        records = next(iter(glob.glob(os.path.join(offline_run, "run-*.wandb"))))
        data = open(records, "rb").read()
        assert b"env_id" in data and b"Pong-v4" in data and b"dqn_baseline_rr0.25" in data  # the config
        for tag in ("losses/td_loss", "srank/fc1", "dormant/tau=0.1/total", "dormant/overlap/fc1"):
            assert tag.encode() in data, (offline_run, tag)  # the TensorBoard scalars, mirrored
        copied = glob.glob(os.path.join(offline_run, "files", "runs", run_dir.name, "events.out.tfevents.*"))
        assert copied  # and the event files themselves, uploaded by `wandb sync`


def test_track_without_a_login_or_wandb_is_a_one_line_error_before_anything_is_made(tmp_path, monkeypatch):
    env = {key: value for key, value in offline_env(tmp_path).items() if key not in ("WANDB_MODE", "WANDB_API_KEY")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    result = subprocess.run([sys.executable, str(ROOT / "dqn_redo.py"), *SHORT, "--track"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not (tmp_path / "runs").exists()
    assert result.stderr.strip().splitlines() == [
        "error: --track needs a Weights & Biases login (run `wandb login`, or set WANDB_API_KEY), "
        "or WANDB_MODE=offline to log locally and `wandb sync` later"]
    real_find_spec = dqn_redo.importlib.util.find_spec
    monkeypatch.setattr(dqn_redo.importlib.util, "find_spec",
                        lambda name: None if name in ("wandb", "moviepy") else real_find_spec(name))
    assert argument_error(Args(track=True)) == ("--track needs wandb: pip install wandb==0.31.0 "
                                                "(pinned in requirements.txt)")
    assert argument_error(Args(capture_video=True)) == ("--capture-video needs moviepy: pip install moviepy==2.2.1 "
                                                        "(pinned in requirements.txt)")


@pytest.mark.seconds(30)
def test_capture_video_records_a_whole_game_and_changes_nothing_the_agent_learns(tmp_path):
    flags = [*SHORT, "--total-timesteps", "1000", "--torch-threads", "1"]
    for name in ("plain", "video"):
        (tmp_path / name).mkdir()
    plain = start_script(tmp_path / "plain", *flags)
    video = run_script(tmp_path / "video", *flags, "--capture-video")
    assert video.returncode == 0, video.stderr[-3000:]
    _, plain_stderr = plain.communicate(timeout=300)
    assert plain.returncode == 0, plain_stderr[-3000:]
    run_dir = only_run(tmp_path / "video")
    videos = sorted((tmp_path / "video" / "videos" / run_dir.name).glob("*.mp4"))
    assert videos and videos[0].name == "rl-video-episode-0.mp4"
    import imageio.v3 as iio

    frames = sum(1 for _ in iio.imiter(videos[0]))
    first_game = scalars(run_dir)["charts/episodic_length"][0][1]  # agent steps; the video has one frame per step
    assert abs(frames - (first_game + 1)) <= 1 and frames > 500  # the whole game: Pong's 21 points, not one life
    with_video, without = scalars(run_dir), scalars(only_run(tmp_path / "plain"))
    for tag in ("losses/td_loss", "charts/episodic_return", "dormant/tau=0.1/total", "srank/fc1"):
        assert with_video[tag] == without[tag], tag


def test_redo_installs_with_pip_and_imports_from_anywhere(tmp_path):
    """Builds the wheel from pyproject.toml (no network: setuptools from this venv), installs it into a new venv that
    sees this one's packages after its own, and imports redo there from a folder far from the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "redo.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(wheels), str(source)], check=True, timeout=300)
    wheel = next(wheels.glob("redo_pytorch-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    import torch  # this venv's torch, seen from the new one through a .pth file (installing it would take minutes)

    site_packages = next(venv.glob("lib/python3*/site-packages"))
    (site_packages / "torch_from_the_test_venv.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--no-deps", "-q",
                    str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import importlib.metadata as m, redo; print(redo.__file__); print(m.requires('redo-pytorch')); "
             "print(sorted(redo.__all__))")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", probe], cwd=elsewhere, capture_output=True, text=True, check=True,
                         env=env).stdout.split("\n")
    assert out[0].startswith(str(venv)) and out[0].endswith("site-packages/redo.py")
    assert out[1] == "['torch>=2.1']"  # torch is its only dependency
    assert out[2] == str(sorted(["dormant_scores", "dormant_fractions", "dormant_overlap", "srank", "recycle_dormant"]))


def test_under_the_readme_test_command_each_worker_and_its_scripts_use_one_thread():
    """The README's test command runs one pytest-xdist worker per core; tests/conftest.py gives each worker, and
    every process it starts, one torch thread, so that the workers do not share cores."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("checks the README's test command, which runs the suite under pytest-xdist (-n auto)")
    import torch

    assert torch.get_num_threads() == 1
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                           text=True, timeout=120)
    assert child.stdout.strip() == "1", child.stderr[-2000:]


@pytest.mark.parametrize("options, message", [
    ({"env_id": "Foo-v4"}, "error: unknown Atari env id 'Foo-v4': did you mean"),
    ({"warmup_steps": 10}, "error: --redo-batch-size must be from 1 to --warmup-steps (10)"),
    ({"seeds": []}, "error: --seeds needs at least one seed"),
])
def test_dormant_at_init_refuses_bad_input_in_one_line(capsys, options, message):
    """Each once ended in a traceback: an unknown game from gymnasium, a sample larger than the replay, no seed."""
    import dormant_at_init

    with pytest.raises(SystemExit) as exit_info:
        dormant_at_init.main(dormant_at_init.Options(**options))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(message) and err.count("\n") == 1


def test_a_benchmark_agent_that_does_not_exist_is_refused_by_the_parser(capsys):  # once: a ValueError from max()
    import benchmark
    import tyro

    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(benchmark.Args, args=["--agents", "foo"])
    assert exit_info.value.code == 2 and "foo" in capsys.readouterr().err


def test_dopamine_reference_outside_its_own_venv_says_how_to_make_it():  # once: ModuleNotFoundError: gin
    if importlib.util.find_spec("dopamine") is not None:
        pytest.skip("run in the Dopamine venv, where the script has what it needs")
    result = subprocess.run([sys.executable, str(ROOT / "dopamine_reference.py"), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not installed: this script runs in a venv of its own" in result.stderr.splitlines()[-1]
    assert "pip install -r requirements-dopamine.txt" in result.stderr
