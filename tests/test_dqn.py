"""dqn_redo.py end to end on the real game, and its pieces."""

import json
import math
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dqn_redo import Args, QNetwork, gradient_steps_due, main, make_env

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["conv1", "conv2", "conv3", "fc1"]


def run_script(cwd: Path, *flags: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "dqn_redo.py"), *flags], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start_script(cwd: Path, *flags: str) -> subprocess.Popen:
    """dqn_redo.py in the background (collect with ``communicate``)."""
    return subprocess.Popen([sys.executable, str(ROOT / "dqn_redo.py"), *flags], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def only_run(cwd: Path) -> Path:
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    result = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    result["_tensors"] = events.Tags()["tensors"]
    return result


SMALL_RUN = ["--total-timesteps", "3000", "--learning-starts", "1000", "--buffer-size", "5000",
             "--redo-interval", "50", "--log-interval", "20", "--seed", "1",
             "--batch-size", "8", "--srank-states", "128"]  # small batches: a fast suite


@pytest.mark.seconds(58)
def test_end_to_end_logs_every_tag_with_sane_values(tmp_path):
    """One short ReDo run on the real game: every tag, the closing lines, the values. One test, because a run shared
    through a module-scoped fixture would be made once per pytest-xdist worker."""
    result = run_script(tmp_path, "--env-id", "DemonAttack-v4", "--enable-redo", "--redo-end-update", "400", *SMALL_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = scalars(only_run(tmp_path))
    expected = ["charts/episodic_return", "charts/episodic_length", "charts/epsilon", "charts/SPS",
                "losses/td_loss", "losses/q_values", "charts/gradient_steps", "redo/recycled/total"]
    expected += [f"dormant/tau={tau}/{layer}" for tau in ("0", "0.025", "0.1") for layer in LAYERS + ["total"]]
    expected += [f"redo/recycled/{layer}" for layer in LAYERS] + ["srank/fc1", "dormant/overlap/fc1",
                                                                  "dormant/again/total", "dormant/again/fc1"]
    assert set(expected) <= set(logged), sorted(set(expected) - set(logged))
    assert not any(tag.endswith("/q") for tag in logged)  # the output layer is never scored
    assert {"hyperparameters/text_summary", "custom_scalars__config__"} <= set(logged["_tensors"])
    # No "nan" while nothing is known yet; a closing line that names the run folder and the commands for it.
    assert "nan" not in result.stderr and "compiling the update with torch.compile" in result.stderr
    run_dir = "runs/" + only_run_name(result)
    assert "done: 3,000 agent steps (500 updates) in" in result.stderr
    assert f"logs and checkpoint in {run_dir}" in result.stderr and f"python plot.py {run_dir}" in result.stderr
    assert only_run_name(result).startswith("DemonAttack-v4__dqn_redo_rr0.25__1__")  # the arm and replay ratio
    assert "step 3,000/3,000" in result.stderr and "SPS" in result.stderr and "ETA" in result.stderr

    # 2000 training steps at replay ratio 0.25: exactly 500 gradient steps.
    assert logged["charts/gradient_steps"][-1] == (2999, 500)
    # Dormant fractions at the first training step, before any update, then every 50 gradient steps.
    dormant = logged["dormant/tau=0.1/total"]
    assert dormant[0][0] == 1000 and len(dormant) == 1 + 500 // 50  # at initialization, then every 50
    for tau in ("0", "0.025", "0.1"):
        for layer in LAYERS + ["total"]:
            assert all(0 <= v <= 1 for _, v in logged[f"dormant/tau={tau}/{layer}"])
    # Inclusive thresholds: more neurons are dormant at a higher tau.
    for (_, zero), (_, small), (_, large) in zip(logged["dormant/tau=0/total"], logged["dormant/tau=0.025/total"],
                                                 dormant):
        assert zero <= small <= large
    # The total pools 672 neurons: 32 + 64 + 64 + 512.
    step_fractions = {layer: logged[f"dormant/tau=0.1/{layer}"][0][1] for layer in LAYERS}
    pooled = (32 * step_fractions["conv1"] + 64 * step_fractions["conv2"] + 64 * step_fractions["conv3"]
              + 512 * step_fractions["fc1"]) / 672
    assert dormant[0][1] == pytest.approx(pooled, abs=1e-6)
    # Recycling at the checks before update 400 only (50, ..., 350); the checks go on scoring and logging to the end.
    recycled = logged["redo/recycled/total"]
    assert [step for step, _ in recycled] == [step for step, _ in dormant[1:8]] and sum(v for _, v in recycled) > 0
    assert "every 50 updates, before update 400)" in result.stdout
    assert all(v == int(v) and 0 <= v <= 672 for _, v in recycled)
    assert all(math.isfinite(v) and v >= 0 for _, v in logged["losses/td_loss"])
    assert all(0.01 <= v <= 1 for _, v in logged["charts/epsilon"])
    assert all(v >= 0 for _, v in logged["charts/episodic_return"])
    assert all(v > 0 for _, v in logged["charts/episodic_length"])
    # srank and the overlap at every check, as the fractions; nothing was dormant before the first check.
    assert [step for step, _ in logged["srank/fc1"]] == [step for step, _ in dormant]
    assert all(v == int(v) and 1 <= v <= 512 for _, v in logged["srank/fc1"])
    overlap = logged["dormant/overlap/fc1"]
    assert [step for step, _ in overlap] == [step for step, _ in dormant] and overlap[0][1] == 0
    assert all(0 <= v <= 1 for _, v in overlap) and max(v for _, v in overlap) > 0
    # The share dormant again at every check after the first (some neuron is dormant at every check here).
    again = logged["dormant/again/total"]
    assert [step for step, _ in again] == [step for step, _ in dormant][1:] and all(0 <= v <= 1 for _, v in again)


def only_run_name(result: subprocess.CompletedProcess) -> str:
    """The run folder's name, as the run's first line prints it."""
    return result.stdout.split("\n")[0].split()[1].removeprefix("runs/")


@pytest.mark.seconds(58)
def test_same_seed_gives_identical_losses(tmp_path):
    flags = ["--total-timesteps", "800", "--learning-starts", "400", "--buffer-size", "2000", "--replay-ratio", "0.5",
             "--redo-interval", "40", "--log-interval", "10", "--enable-redo", "--torch-threads", "1",
             "--batch-size", "8", "--srank-states", "128"]
    runs = {}
    for name in ("a", "b"):  # side by side, one core each
        (tmp_path / name).mkdir()
        runs[name] = start_script(tmp_path / name, *flags)
    losses = []
    for name, process in runs.items():
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr[-3000:]
        logged = scalars(only_run(tmp_path / name))
        losses.append((logged["losses/td_loss"], logged["dormant/tau=0.1/total"], logged["redo/recycled/total"]))
    assert len(losses[0][0]) == 20 and len(losses[0][1]) == 6  # at the warm-up's end, then every 40 updates
    assert losses[0] == losses[1]


@pytest.mark.seconds(53)
def test_save_model_evaluate_and_replay_the_games_the_cap_cut(tmp_path):
    result = run_script(tmp_path, "--env-id", "Pong-v4", "--save-model", "--eval-episodes", "2",
                        "--max-episode-steps", "60", "--total-timesteps", "400", "--learning-starts", "200",
                        "--buffer-size", "1000", "--redo-batch-size", "64")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run(tmp_path)
    saved = torch.load(run_dir / "dqn_baseline_rr0.25.pt", weights_only=True)  # <exp-name>.pt
    assert saved["args"]["env_id"] == "Pong-v4"
    QNetwork(6).load_state_dict(saved["model"])
    evaluation = scalars(run_dir)["eval/episodic_return"]
    assert len(evaluation) == 2 and all(-21 <= value <= 21 for _, value in evaluation)
    record = json.loads((run_dir / "evaluation.json").read_text())
    assert record["returns"] == [value for _, value in evaluation]
    assert record["lengths"] == [value for _, value in scalars(run_dir)["eval/episodic_length"]] == [60, 60]
    assert record["at_cap"] == [True, True]  # Pong takes far more than 60 agent steps
    assert "in 60 steps (the cap), mean" in result.stderr and "2 of them cut by the 60-step cap" in result.stdout
    figure = tmp_path / "stalled.png"
    replay = subprocess.run([sys.executable, str(ROOT / "stalled_games.py"), str(run_dir / "checkpoint.pt"),
                             "--out", str(figure), "--screens", "10", "30"],
                            capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr[-3000:]  # it exits 1 if a return differs from evaluation.json
    assert f"game 1: return {record['returns'][0]:g} in 60 steps (the cap)" in replay.stdout
    assert "game 2" not in replay.stdout + replay.stderr and "screens of steps 10, 30 in" in replay.stdout
    assert figure.stat().st_size > 10_000
    every = subprocess.run([sys.executable, str(ROOT / "stalled_games.py"), str(run_dir), "--screens", "10",
                            "--every-game", "--out", str(tmp_path / "every.png")], capture_output=True, text=True,
                           timeout=120)
    assert every.returncode == 0, every.stderr[-3000:]
    assert [line for line in every.stdout.splitlines() if line.startswith("game ")] == [
        f"game {n}: return {record['returns'][n - 1]:g} in 60 steps (the cap)" for n in (1, 2)]
    assert every.stdout.count("last points at step") == 2 and "screens of steps 10 in" in every.stdout
    (run_dir / "evaluation.json").write_text(json.dumps({**record, "returns": [record["returns"][0] + 1] * 2}))
    other = subprocess.run([sys.executable, str(ROOT / "stalled_games.py"), str(run_dir), "--screens", "10"],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and "error: game 1 returned" in other.stderr  # not the run's evaluation
    missing = subprocess.run([sys.executable, str(ROOT / "stalled_games.py"), str(tmp_path / "nothing")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    outside = subprocess.run([sys.executable, str(ROOT / "stalled_games.py"), str(run_dir), "--screens", "61"],
                             capture_output=True, text=True, timeout=120)
    assert outside.returncode == 2 and outside.stderr.startswith("error: --screens takes agent steps from 1 to")


def test_a_stalled_games_summary_names_its_last_points_its_largest_reward_and_the_stalls_actions():
    from stalled_games import summarize

    # Pong's evaluation game 5 of the DrQ(ε) baseline, in miniature: points, then a jump of the score that no rally
    # makes (the console ending the game at its clock), then a stall of NOOPs.
    game = {"lives": [0] * 7, "actions": [2, 3, 2, 0, 0, 0], "rewards": [(-1.0, 1), (1.0, 2), (18.0, 3)]}
    assert summarize(game, ["NOOP", "FIRE", "RIGHT", "LEFT"]) == (
        "lives lost at steps [], last points at step 3 (largest one-step reward +18, at step 3); "
        "actions after them: NOOP 100%")
    lives = {"lives": [3, 3, 2, 2], "actions": [1, 1, 1], "rewards": []}
    assert summarize(lives, ["NOOP", "FIRE"]) == (
        "lives lost at steps [2], last points at step 0; actions after them: FIRE 100%")


@pytest.mark.seconds(25)
def test_a_final_evaluation_not_played_is_played_on_resume_and_only_once(tmp_path):
    flags = ["--env-id", "Pong-v4", "--total-timesteps", "300", "--learning-starts", "200", "--buffer-size", "1000",
             "--redo-batch-size", "64", "--srank-states", "64", "--no-compile"]
    trained = run_script(tmp_path, *flags)  # e.g. stopped during its evaluation: none logged
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = only_run(tmp_path)
    evaluated = run_script(tmp_path, "--resume", str(run_dir), "--eval-episodes", "1")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "evaluating: 1 full games" in evaluated.stderr and len(scalars(run_dir)["eval/episodic_return"]) == 1
    game_return = scalars(run_dir)["eval/episodic_return"][0][1]
    length = int(scalars(run_dir)["eval/episodic_length"][0][1])
    assert f"game 1/1: return {game_return:.0f} in {length:,} steps, mean {game_return:.1f}" in evaluated.stderr
    # The closing line's time is this process's: a resumed run says so (a sweep's cell once read "done in 25m").
    assert "done: 300 agent steps" in trained.stderr and "since the resume" not in trained.stderr
    assert re.search(r"done: 300 agent steps \(\d+ updates\) in \S+ since the resume at step 300;", evaluated.stderr)
    again = run_script(tmp_path, "--resume", str(run_dir), "--eval-episodes", "1")
    assert again.returncode == 2 and "is not past the checkpoint's step 300" in again.stderr


@pytest.mark.parametrize("env_id, sticky", [("DemonAttack-v4", 0.25), ("DemonAttackNoFrameskip-v4", 0.0),
                                            ("ALE/DemonAttack-v5", 0.25), ("ALE/DemonAttack-v5", 0.0)])
def test_four_emulator_frames_per_agent_step(env_id, sticky):
    env = make_env(Args(env_id=env_id, sticky_actions=sticky))
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == pytest.approx(sticky)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        before = ale.getEpisodeFrameNumber()
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        assert ale.getEpisodeFrameNumber() - before == 4
        if terminated or truncated:
            env.reset()
    obs, _ = env.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    env.close()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0, 2.0, 0.1, 0.3, 1.5])
def test_replay_ratio_schedule_is_exact(ratio):
    fraction = Fraction(str(ratio))
    done, per_step = 0, []
    for k in range(1, 1001):
        due = gradient_steps_due(k, fraction)
        per_step.append(due - done)
        done = due
    assert done == round(1000 * ratio)
    assert all(gradient_steps_due(k, fraction) == math.floor(k * ratio + 1e-9) for k in range(1, 5001))
    if ratio == 0.25:
        assert [i + 1 for i, n in enumerate(per_step) if n] [:3] == [4, 8, 12]
    if ratio == 2.0:
        assert set(per_step) == {2}
    assert max(per_step) - min(per_step) <= 1  # evenly spread


@pytest.mark.parametrize("overrides, message", [
    ({"env_id": "DemonAtack-v4"}, "did you mean DemonAttack-v4"),
    ({"env_id": "CartPole-v1"}, "unknown Atari env id"),
    ({"redo_tau": -0.1}, "--redo-tau"),
    ({"redo_interval": 0}, "--redo-interval"),
    ({"redo_end_update": 0}, "--redo-end-update must be positive (leave it out to recycle to the end)"),
    ({"replay_ratio": 0.0}, "--replay-ratio"),
    ({"replay_ratio": -1.0}, "--replay-ratio"),
    ({"batch_size": 0}, "--batch-size"),
    ({"redo_batch_size": -5}, "--redo-batch-size"),
    ({"buffer_size": 16}, "--buffer-size"),
    ({"learning_starts": 31}, "--learning-starts"),
    ({"buffer_size": 10**9}, "GiB is available"),
    ({"exp_name": "../../x"}, "--exp-name '../../x' must be a plain name"),
    ({"exp_name": "a/b"}, "--exp-name"),
    ({"total_timesteps": 20_000}, "the run would never train"),
    ({"gamma": 1.5}, "--gamma must be in [0, 1]"),
    ({"gamma": -0.1}, "--gamma"),
    ({"learning_rate": math.inf}, "--learning-rate must be positive and finite"),
    ({"learning_rate": math.nan}, "--learning-rate"),
    ({"learning_rate": 0.0}, "--learning-rate"),
    ({"sticky_actions": 1.5}, "--sticky-actions"),
    ({"noop_max": -1}, "--noop-max"),
    ({"max_episode_steps": 0}, "--max-episode-steps"),
])
def test_bad_input_exits_2_before_creating_anything(overrides, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(Args(**overrides))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_bad_input_from_the_command_line(tmp_path):
    result = run_script(tmp_path, "--redo-tau", "-1", timeout=60)
    assert result.returncode == 2 and "--redo-tau must be >= 0" in result.stderr
    assert not (tmp_path / "runs").exists()


class Recorder:
    """A stand-in for SummaryWriter that keeps what is logged."""

    def __init__(self):
        self.scalars: dict[str, float] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars[tag] = value


def test_with_redo_the_dormant_fractions_logged_are_those_before_the_recycling():
    from dqn_redo import Counters, FrameReplayBuffer, check_dormant
    from redo import dormant_fractions, dormant_scores

    torch.manual_seed(0)
    args = Args(redo_batch_size=32, redo_tau=0.1)
    q_network = QNetwork(6)
    with torch.no_grad():
        q_network.fc1.bias[:100] = -1e3  # a fifth of fc1 dormant
    rb = FrameReplayBuffer(100, 4, (84, 84), torch.device("cpu"), np.random.default_rng(0))
    frames = np.random.default_rng(1).integers(0, 256, (60, 84, 84), dtype=np.uint8)
    for t in range(56):
        rb.add(frames[t:t + 4], 0, 0.0, frames[t + 1:t + 5], False, False)
    rb.sample(args.srank_states)  # what check_dormant will draw, from the same RNG state: srank's states first
    states = rb.sample(32).obs
    rb.rng = np.random.default_rng(0)
    before = dormant_fractions(dormant_scores(q_network, states), 0.1)
    writer = Recorder()
    logged = check_dormant(q_network, torch.optim.Adam(q_network.parameters()), rb, args, writer, 5, recycle=True,
                           counters=Counters())
    after = dormant_fractions(dormant_scores(q_network, states), 0.1)
    assert writer.scalars["redo/recycled/fc1"] >= 100
    assert logged == before["total"] == writer.scalars["dormant/tau=0.1/total"] > after["total"]
    assert writer.scalars["dormant/tau=0.1/fc1"] == before["fc1"] >= 100 / 512


@pytest.mark.parametrize("recycle", [False, True])
def test_dormant_again_is_the_share_of_the_last_checks_dormant_neurons_dormant_now(recycle):
    from types import SimpleNamespace

    from dqn_redo import Counters, check_dormant
    from redo import dormant_scores

    torch.manual_seed(0)
    args = Args(redo_batch_size=32, redo_tau=0.1, srank_states=32)
    states = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (32, 4, 84, 84), dtype=np.uint8))
    replay = SimpleNamespace(sample=lambda n: SimpleNamespace(obs=states[:n]))
    q_network, counters, writer = QNetwork(6), Counters(), Recorder()
    with torch.no_grad():
        q_network.fc1.bias[:100] = -1e3
        q_network.conv1.bias[:4] = -1e3
    first = {name: score <= 0.1 for name, score in dormant_scores(q_network, states).items()}
    check_dormant(q_network, torch.optim.Adam(q_network.parameters()), replay, args, writer, 0, recycle, counters)
    assert not any(tag.startswith("dormant/again/") for tag in writer.scalars)  # no earlier check
    with torch.no_grad():  # 30 of the first check's dormant fc1 neurons stay so, and 50 others join them
        q_network.fc1.bias[:30] = -1e3
        q_network.fc1.bias[200:250] = -1e3
    second = {name: score <= 0.1 for name, score in dormant_scores(q_network, states).items()}
    check_dormant(q_network, torch.optim.Adam(q_network.parameters()), replay, args, writer, 1, recycle, counters)
    both = {name: int((first[name] & second[name]).sum()) for name in first}
    for name in first:
        if first[name].any():
            assert writer.scalars[f"dormant/again/{name}"] == both[name] / int(first[name].sum())
        else:
            assert f"dormant/again/{name}" not in writer.scalars
    assert writer.scalars["dormant/again/total"] == sum(both.values()) / sum(int(m.sum()) for m in first.values())
    assert 30 <= both["fc1"] < first["fc1"].sum() != second["fc1"].sum()  # a share strictly between 0 and 1
    assert torch.equal(counters.dormant_last_check["fc1"], second["fc1"])


def test_evaluation_plays_full_games_at_the_eval_epsilon(monkeypatch):
    import dqn_redo

    epsilons = []

    def recording_act(q_network, obs, epsilon, rng, device):
        epsilons.append(epsilon)
        return 0

    monkeypatch.setattr(dqn_redo, "act", recording_act)
    args = Args(env_id="Pong-v4", eval_episodes=1, terminal_on_life_loss=True)  # evaluation ignores it: full games
    returns, lengths, at_cap = dqn_redo.evaluate(QNetwork(6), args, torch.device("cpu"))
    assert len(returns) == 1 and returns[0] == -21  # a whole game of Pong lost 0-21, not one point
    assert set(epsilons) == {0.001} and lengths == [len(epsilons)] and len(epsilons) > 500  # one action a step
    assert at_cap == [False]


def test_an_interrupted_evaluation_goes_on_with_the_games_an_unbroken_one_plays(tmp_path, capsys, monkeypatch):
    import dataclasses
    import types

    import dqn_redo
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    q_network, cpu = QNetwork(6), torch.device("cpu")
    # Sticky actions and epsilon 0.5: the emulator's and the policy's random draws both decide every game; its
    # demons move from the first frame, so a game's start differs with the no-ops before it.
    args = Args(env_id="DemonAttack-v4", eval_episodes=3, eval_epsilon=0.5, max_episode_steps=60)

    def recording(actions: list, stop_after_games: int | None = None):
        """Records each step's action, the observation it was chosen on and the emulator's RAM after it."""
        ends = []

        def on_step(env, action, reward, terminated, truncated):
            actions.append((action, seen.pop(), env.unwrapped.ale.getRAM().tobytes()))
            ends.append(terminated or truncated)
            return sum(ends) == stop_after_games
        return on_step

    seen, act = [], dqn_redo.act

    def seeing_act(q_network, obs, *rest):
        seen.append(obs.tobytes())
        return act(q_network, obs, *rest)

    monkeypatch.setattr(dqn_redo, "act", seeing_act)

    unbroken_actions, first_actions, rest_actions = [], [], []
    unbroken = dqn_redo.evaluate(q_network, args, cpu, on_step=recording(unbroken_actions))
    path = str(tmp_path / dqn_redo.EVALUATING)
    first = dqn_redo.evaluate(q_network, args, cpu, on_step=recording(first_actions, 2), progress_path=path)
    assert first == tuple(games[:2] for games in unbroken)
    resumed = dqn_redo.evaluate(q_network, args, cpu, on_step=recording(rest_actions), progress_path=path)
    assert "continuing the evaluation after game 2" in capsys.readouterr().err
    assert resumed == unbroken and first_actions + rest_actions == unbroken_actions
    assert len({action for action, _, _ in unbroken_actions}) == 6 and unbroken[1] == [60, 60, 60]  # all capped
    # Fewer games asked for: the first ones saved, none played.
    fewer = dqn_redo.evaluate(q_network, dataclasses.replace(args, eval_episodes=2), cpu,
                              on_step=recording(extra := []), progress_path=path)
    assert fewer == tuple(games[:2] for games in unbroken) and extra == []
    # Another network (say, trained further after the interruption): the saved games are not its own.
    with torch.no_grad():
        q_network.q.bias[3] += 10.0
    again_actions, fresh_actions = [], []
    again = dqn_redo.evaluate(q_network, args, cpu, on_step=recording(again_actions), progress_path=path)
    assert "of another network or epsilon; the evaluation starts over" in capsys.readouterr().err
    assert again == dqn_redo.evaluate(q_network, args, cpu, on_step=recording(fresh_actions))
    assert again_actions == fresh_actions != unbroken_actions and len(again_actions) == 180
    # A complete evaluation is logged once and its progress file removed.
    writer = SummaryWriter(str(tmp_path / "events"))
    dqn_redo.evaluate_and_log(q_network, args, writer, cpu, str(tmp_path), types.SimpleNamespace(signum=None))
    writer.close()
    assert json.loads((tmp_path / dqn_redo.EVALUATED).read_text())["returns"] == again[0]
    assert not os.path.exists(path)


def test_the_progress_line_shows_a_dash_not_nan_before_anything_is_known(capsys):
    from dqn_redo import Progress

    Progress(Args(total_timesteps=10), 0).update(9, 1.0, warming_up=True)  # the last step always prints
    line = capsys.readouterr().err
    assert "return - | dormant(tau=0.1) - | warming up" in line and "nan" not in line
