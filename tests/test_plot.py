"""plot.py on synthetic event files written with TensorBoard's own writer."""

import json

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

import plot


def write_run(folder, env_id: str, replay_ratio: float, redo: bool, seed: int, steps: int, dormant_level: float,
              code: str = ""):
    writer = SummaryWriter(str(folder))
    params = {"env_id": env_id, "replay_ratio": replay_ratio, "enable_redo": redo, "redo_tau": 0.1, "seed": seed}
    if code:  # what dopamine_reference.py adds
        params["code"] = code
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in params.items()))
    rng = np.random.default_rng(seed)
    for step in range(0, steps, 100):
        writer.add_scalar("charts/episodic_return", 100 + step / 10 + rng.normal(), step)
        for tau, scale in (("0", 0.5), ("0.1", 1.0)):
            writer.add_scalar(f"dormant/tau={tau}/total", scale * dormant_level, step)
            for layer in ("conv1", "conv2", "conv3", "fc1"):
                writer.add_scalar(f"dormant/tau={tau}/{layer}", scale * dormant_level, step)
    writer.close()


@pytest.fixture
def runs(tmp_path):
    write_run(tmp_path / "a1", "DemonAttack-v4", 1.0, False, 1, 3000, 0.4)
    write_run(tmp_path / "a2", "DemonAttack-v4", 1.0, False, 2, 2000, 0.5)  # shorter: still running
    write_run(tmp_path / "b1", "DemonAttack-v4", 1.0, True, 1, 3000, 0.05)
    write_run(tmp_path / "b2", "DemonAttack-v4", 1.0, True, 2, 3000, 0.05)
    write_run(tmp_path / "c1", "DemonAttack-v4", 0.25, False, 1, 3000, 0.2)
    write_run(tmp_path / "d1", "Pong-v4", 1.0, False, 1, 1000, 0.3)
    (tmp_path / "not-a-run").mkdir()
    return tmp_path


def test_groups_curves_and_files(runs, tmp_path):
    out = tmp_path / "img"
    plot.main(plot.Args(paths=[str(runs)], out_dir=str(out), bootstrap_samples=200, note="synthetic"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{game}_{kind}.png" for game in ("DemonAttack-v4", "Pong-v4")
        for kind in ("return", "dormant", "dormant_layers"))
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in [p.name for p in out.iterdir()])

    loaded = [plot.load_run(d) for d in plot.find_run_dirs([str(runs)])]
    figures = plot.make_figures(loaded, plot.Args(bootstrap_samples=200))
    returns_ax = figures["DemonAttack-v4_return"].axes[0]
    labels = [line.get_label() for line in returns_ax.get_lines()]
    assert labels == ["DQN, RR 0.25 (n=1)", "DQN, RR 1 (n=2 to 2k, 1 to 3k)", "DQN + ReDo (tau=0.1), RR 1 (n=2)"]
    dormant_axes = figures["DemonAttack-v4_dormant"].axes
    assert [len(ax.get_lines()) for ax in dormant_axes] == [3, 3]
    assert len(figures["DemonAttack-v4_dormant_layers"].axes) == 4
    assert all(len(ax.get_lines()) == 3 for ax in figures["DemonAttack-v4_dormant_layers"].axes)
    assert len(figures["Pong-v4_return"].axes[0].get_lines()) == 1

    # The baseline curve at tau = 0.1 is the mean of 40 % and 50 % where both runs have data, and
    # 40 % alone past the shorter run's end; percentages on the y axis.
    baseline = dormant_axes[1].get_lines()[1]
    x, y = baseline.get_xdata(), baseline.get_ydata()
    assert np.allclose(y[x < 1900], 45.0) and np.allclose(y[x > 2100], 40.0)


def test_the_authors_code_is_its_own_curve(runs, tmp_path):
    write_run(tmp_path / "e1", "DemonAttack-v4", 1.0, False, 1, 3000, 0.3, code="Dopamine")
    loaded = [plot.load_run(d) for d in plot.find_run_dirs([str(runs)])]
    dormant_ax = plot.make_figures(loaded, plot.Args(bootstrap_samples=50))["DemonAttack-v4_dormant"].axes[1]
    lines = {line.get_label(): line for line in dormant_ax.get_lines()}
    assert list(lines) == ["DQN, RR 0.25 (n=1)", "DQN, RR 1 (n=2 to 2k, 1 to 3k)", "DQN, Dopamine's code, RR 1 (n=1)",
                           "DQN + ReDo (tau=0.1), RR 1 (n=2)"]
    reference = lines["DQN, Dopamine's code, RR 1 (n=1)"]
    assert reference.get_linestyle() == ":" and np.allclose(reference.get_ydata(), 30.0)
    assert np.allclose(lines["DQN, RR 1 (n=2 to 2k, 1 to 3k)"].get_ydata()[:5], 45.0)  # its own runs only


def test_iqm_and_band():
    assert plot.iqm(np.array([1.0, 2.0, 3.0, 100.0])) == pytest.approx(2.5)
    assert plot.iqm(np.array([1.0, 3.0])) == pytest.approx(2.0)
    per_run = np.array([[1.0, 2.0], [3.0, np.nan]])
    center, low, high = plot.aggregate(per_run, lambda x, axis=None: np.mean(x, axis=axis), 500,
                                       np.random.default_rng(0))
    assert center.tolist() == [2.0, 2.0] and low[0] >= 1.0 and high[0] <= 3.0 and low[1] == high[1] == 2.0


def test_table_lists_each_group(runs, capsys):
    plot.main(plot.Args(paths=[str(runs / "b1"), str(runs / "b2")], out_dir=str(runs / "out"), bootstrap_samples=50))
    table = capsys.readouterr().out
    assert "| DemonAttack-v4 | DQN + ReDo (tau=0.1), RR 1 (n=2) | 2 | 2,901 |" in table
    assert "| 5.0 (5.0, 5.0) |" in table


def test_max_steps_compares_runs_at_equal_length(runs, capsys):
    plot.main(plot.Args(paths=[str(runs / "a1"), str(runs / "a2")], out_dir=str(runs / "out"), bootstrap_samples=50,
                        max_steps=1500))
    # Both runs cut to steps 0-1,400: one length again, and the table's "last 10 %" is of those steps
    # (dormant 40 % and 50 % at tau = 0.1; returns 100 + step / 10 at steps 1,300 and 1,400: 235 plus noise).
    row = [line for line in capsys.readouterr().out.splitlines() if "RR 1" in line][0]
    assert "| DQN, RR 1 (n=2) | 2 | 1,401 |" in row and "| 45.0 (40.0, 50.0) |" in row
    returns = float(row.split("|")[5].split()[0])
    assert 230 < returns < 245


def test_max_steps_must_be_positive(runs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot.main(plot.Args(paths=[str(runs / "a1")], out_dir=str(runs / "out"), max_steps=0))
    assert exit_info.value.code == 2 and "--max-steps must be a positive" in capsys.readouterr().err
    assert not (runs / "out").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("bins", 0, "--bins must be at least 1, not 0"),  # once: empty curves, written without a word
    ("bootstrap_samples", 0, "--bootstrap-samples must be at least 1, not 0"),  # once: an IndexError in rliable
    ("final_fraction", 1.5, "--final-fraction must be in (0, 1]"),  # once: the whole run, silently
    ("final_fraction", 0.0, "--final-fraction must be in (0, 1]"),
])
def test_bad_numbers_are_one_line_errors_before_any_figure(runs, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        plot.main(plot.Args(paths=[str(runs)], out_dir=str(runs / "out"), sweep=True, **{flag: value}))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (runs / "out").exists()


def test_windows_print_each_groups_mean_per_window(runs, capsys):
    plot.main(plot.Args(paths=[str(runs / "a1"), str(runs / "a2"), str(runs / "b1")], out_dir=str(runs / "out"),
                        bootstrap_samples=50, windows=1000))
    tables = capsys.readouterr().out.split("\n\n")
    dormant = next(table for table in tables if table.startswith("| dormant/tau=0.1/total, agent steps |"))
    assert dormant.splitlines()[2:] == [  # the baseline: 40 % and 50 % while both runs go, then 40 % alone
        "| 0-1,000 | 45.0 | 5.0 |", "| 1,000-2,000 | 45.0 | 5.0 |", "| 2,000-3,000 | 40.0 | 5.0 |"]
    returns = next(table for table in tables if table.startswith("| charts/episodic_return, agent steps |"))
    a1, a2 = (plot.load_run(str(runs / name)).scalars["charts/episodic_return"] for name in ("a1", "a2"))
    window = lambda run, k: run[1][(run[0] >= 1000 * k) & (run[0] < 1000 * (k + 1))].mean()
    assert returns.splitlines()[2].startswith(f"| 0-1,000 | {(window(a1, 0) + window(a2, 0)) / 2:,.0f} (20 games) |")
    assert returns.splitlines()[4].startswith(f"| 2,000-3,000 | {window(a1, 2):,.0f} (10 games) |")
    assert "dormant/again/total: not logged by these runs" in tables


def test_windows_keep_three_significant_digits_of_small_values(tmp_path, capsys):
    write_run(tmp_path / "run", "Breakout-v4", 1.0, True, 1, 100, 0.1)
    writer = SummaryWriter(str(tmp_path / "run"))  # a second event file, as a resumed run has
    for step, (loss, rank) in enumerate([(0.0441, 433.61), (0.0441, 433.61), (0.00052, 2.5)]):
        writer.add_scalar("losses/td_loss", loss, 1000 * step)
        writer.add_scalar("srank/fc1", rank, 1000 * step)
    writer.close()
    plot.main(plot.Args(paths=[str(tmp_path / "run")], out_dir=str(tmp_path / "out"), bootstrap_samples=50,
                        windows=2000, window_tags=["losses/td_loss", "srank/fc1"]))
    tables = capsys.readouterr().out.split("\n\n")
    loss = next(table for table in tables if table.startswith("| losses/td_loss, agent steps |"))
    rank = next(table for table in tables if table.startswith("| srank/fc1, agent steps |"))
    assert loss.splitlines()[2:] == ["| 0-2,000 | 0.0441 |", "| 2,000-4,000 | 0.00052 |"]
    assert rank.splitlines()[2:] == ["| 0-2,000 | 433.6 |", "| 2,000-4,000 | 2.5 |"]


def test_no_event_files_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot.main(plot.Args(paths=[str(tmp_path)], out_dir=str(tmp_path / "img")))
    assert exit_info.value.code == 2
    assert "no TensorBoard event files under" in capsys.readouterr().err
    assert not (tmp_path / "img").exists()


def test_new_signals_get_figures_and_figures_say_how_they_were_made(tmp_path):
    writer = SummaryWriter(str(tmp_path / "drq"))
    params = {"env_id": "DemonAttack-v4", "replay_ratio": 1.0, "enable_redo": True, "redo_tau": 0.1, "seed": 1,
              "preset": "drq-eps", "hardware": "Test CPU @ 2.8GHz, 2 cores, 1 torch threads", "commit": "abc1234"}
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in params.items()))
    for step in range(0, 5000, 500):
        writer.add_scalar("charts/episodic_return", 150.0, step)
        writer.add_scalar("dormant/tau=0.1/total", 0.1, step)
        writer.add_scalar("srank/fc1", 400.0, step)
        writer.add_scalar("dormant/overlap/fc1", 0.7, step)
        writer.add_scalar("dormant/tau=0.1/fc1", 0.2, step)
        if step:
            writer.add_scalar("dormant/again/total", 0.4, step)
            writer.add_scalar("dormant/again/fc1", 0.5, step)
    for game in range(3):
        writer.add_scalar("eval/episodic_return", 200.0 + game, game)
    writer.close()
    runs = [plot.load_run(str(tmp_path / "drq"))]
    figures = plot.make_figures(runs, plot.Args(bootstrap_samples=50))
    assert {"DemonAttack-v4_srank_overlap", "DemonAttack-v4_eval"} <= set(figures)
    title = figures["DemonAttack-v4_return"]._suptitle.get_text()
    assert "bootstrap CI" not in title  # one run per curve: no band, so no claim of one
    assert "5k agent steps, 1 seed(s) per curve; Test CPU @ 2.8GHz, 2 cores, 1 torch threads; commit abc1234" in title
    labels = [line.get_label() for line in figures["DemonAttack-v4_srank_overlap"].axes[0].get_lines()]
    assert labels == ["DrQ(ε) + ReDo (tau=0.1), RR 1 (n=1)"]
    again = figures["DemonAttack-v4_srank_overlap"].axes[2].get_lines()
    assert len(again) == 1 and np.allclose(again[0].get_ydata(), 40.0)  # the share dormant again, in %
    dormant_fc1, again_fc1 = figures["DemonAttack-v4_dormant_layers"].axes  # one layer: a row per signal
    assert np.allclose(dormant_fc1.get_lines()[0].get_ydata(), 20.0)
    assert np.allclose(again_fc1.get_lines()[0].get_ydata(), 50.0)
    table = plot.summary_table(runs)
    assert "| 150 (150) | 201 (201) | ? |" in table  # training return, final evaluation (mean of 200, 201, 202)
    assert table.endswith("| 10.0 (10.0) | 40.0 (40.0) |")  # dormant at tau 0.1, dormant again
    (tmp_path / "drq" / "evaluation.json").write_text(json.dumps({"returns": [200, 201, 202], "at_cap": [1, 0, 1]}))
    assert "| 150 (150) | 201 (201) | 2 |" in plot.summary_table([plot.load_run(str(tmp_path / "drq"))])


def test_the_table_window_is_the_last_tenth_of_the_runs_agent_steps(tmp_path):
    """A resumed run whose last dormant check was at 3,600 of 6,000 steps has none in the last 10 % of its steps."""
    writer = SummaryWriter(str(tmp_path / "run"))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n|env_id|Pong-v4|\n|replay_ratio|1.0|\n"
                    "|enable_redo|False|\n|redo_tau|0.1|")
    for step in range(0, 6000, 100):
        writer.add_scalar("charts/episodic_return", float(step), step)
    for step in range(0, 3700, 100):
        writer.add_scalar("dormant/tau=0.1/total", float(step), step)
    writer.close()
    run = plot.load_run(str(tmp_path / "run"))
    assert plot.final_value(run, "charts/episodic_return") == np.mean(np.arange(5400, 6000, 100))
    assert np.isnan(plot.final_value(run, "dormant/tau=0.1/total"))
