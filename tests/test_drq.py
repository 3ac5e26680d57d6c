"""DrQ(eps)'s components: n-step replay, double DQN, the dueling network, the augmentation, the Atari-100k protocol."""

import dataclasses
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import dqn_redo
from dqn_redo import (Args, Batch, Counters, FrameReplayBuffer, LifeLossTerminal, QNetwork, act, check_dormant,
                      drq_augment, make_env, make_train_step, preset_args)
from redo import dormant_scores, recycle_dormant
from test_paper_protocol import readme_command, wrappers
from test_replay import STACK, Stream, expected_stored_ids

GAMMA = 0.99


# ---------------------------------------------------------------- n-step returns from the frame replay


def naive_n_step(reference: list, i: int, n: int) -> tuple[float, np.ndarray, bool, float] | None:
    """(return, bootstrap observation, terminated, discount) of transition i, walking the list of whole transitions;
    None if its episode is still being played before n transitions are complete."""
    total = 0.0
    for k in range(n):
        if i + k >= len(reference):
            return None  # the stream stopped in the middle of this window
        _, _, reward, next_obs, terminated, truncated = reference[i + k]
        total += GAMMA**k * reward
        if terminated:
            return total, next_obs, True, 0.0
        if truncated or k == n - 1:
            return total, next_obs, False, GAMMA ** (k + 1)


@pytest.mark.parametrize("seed, capacity, max_len, n", [(0, 40, 25, 3), (1, 57, 6, 10), (2, 100, 40, 10),
                                                        (3, 30, 2, 4)])
def test_n_step_returns_match_a_naive_buffer_through_many_wraparounds(seed, capacity, max_len, n):
    buffer = FrameReplayBuffer(capacity, STACK, (5, 6), torch.device("cpu"), np.random.default_rng(seed), n, GAMMA)
    stream, rng = Stream(seed, max_episode_length=max_len), np.random.default_rng(seed + 100)
    reference, index = [], {}  # observation bytes -> transition (Stream frames are random: stacks are unique)
    for step, (obs, action, _, next_obs, terminated, truncated) in enumerate(stream.transitions(12 * capacity)):
        reward = float(rng.integers(-1, 2))  # clipped-reward-like values, so that sums are exact in float32
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        index[obs.tobytes()] = len(reference)
        reference.append((obs.copy(), action, reward, next_obs.copy(), terminated, truncated))
        if step > 30 and step % 11 == 0:
            check_n_step_samples(buffer, reference, index, n, 64)
    seen = set()
    for _ in range(60):
        seen |= check_n_step_samples(buffer, reference, index, n, 100)
    # Exactly the stored transitions whose window is complete: those of the unfinished newest episode that have
    # fewer than n transitions after them are not sampled.
    stored = expected_stored_ids([(o, a, no, te, tr) for o, a, _, no, te, tr in reference], capacity)
    expected = {i for i in stored if naive_n_step(reference, i, n) is not None}
    assert seen == expected
    if not (reference[-1][4] or reference[-1][5]):  # the stream stops in mid-episode: windows cut short
        assert stored - expected


def check_n_step_samples(buffer, reference, index, n, samples) -> set[int]:
    batch = buffer.sample(samples)
    ids = set()
    for k in range(samples):
        i = index[batch.obs[k].numpy().tobytes()]
        expected = naive_n_step(reference, i, n)
        assert expected is not None, f"transition {i} sampled with an incomplete window"
        total, next_obs, terminated, discount = expected
        assert batch.rewards[k].item() == pytest.approx(total, abs=1e-5), i
        assert np.array_equal(batch.next_obs[k].numpy(), next_obs), i
        assert batch.terminated[k].item() == float(terminated), i
        assert batch.discounts[k].item() == pytest.approx(discount, rel=1e-6), i
        assert batch.actions[k].item() == reference[i][1]
        ids.add(i)
    return ids


def test_n_step_by_hand_termination_truncation_and_the_episode_in_progress():
    buffer = FrameReplayBuffer(64, STACK, (1, 1), torch.device("cpu"), np.random.default_rng(0), 3, 0.5)
    f = lambda v: np.full((1, 1), v, dtype=np.uint8)
    stack = lambda *values: np.stack([f(v) for v in values])
    # Episode 1: rewards 1, 2, 4, 8, terminated at the 4th transition.
    buffer.add(stack(1, 1, 1, 1), 0, 1.0, stack(1, 1, 1, 2), False, False)
    buffer.add(stack(1, 1, 1, 2), 0, 2.0, stack(1, 1, 2, 3), False, False)
    buffer.add(stack(1, 1, 2, 3), 0, 4.0, stack(1, 2, 3, 4), False, False)
    buffer.add(stack(1, 2, 3, 4), 0, 8.0, stack(2, 3, 4, 5), True, False)
    # Episode 2: rewards 16, 32, truncated at the 2nd.
    buffer.add(stack(9, 9, 9, 9), 0, 16.0, stack(9, 9, 9, 10), False, False)
    buffer.add(stack(9, 9, 9, 10), 0, 32.0, stack(9, 9, 10, 11), False, True)
    # Episode 3, still being played: two transitions so far.
    buffer.add(stack(20, 20, 20, 20), 0, 64.0, stack(20, 20, 20, 21), False, False)
    buffer.add(stack(20, 20, 20, 21), 0, 128.0, stack(20, 20, 21, 22), False, False)
    by_first = {}
    for _ in range(50):
        batch = buffer.sample(16)
        for k in range(16):
            by_first[tuple(batch.obs[k, :, 0, 0].tolist())] = (batch.rewards[k].item(),
                                                               batch.next_obs[k, :, 0, 0].tolist(),
                                                               batch.terminated[k].item(), batch.discounts[k].item())
    assert by_first == {
        (1, 1, 1, 1): (1 + 0.5 * 2 + 0.25 * 4, [1, 2, 3, 4], 0.0, 0.125),  # three transitions, bootstrap
        (1, 1, 1, 2): (2 + 0.5 * 4 + 0.25 * 8, [2, 3, 4, 5], 1.0, 0.0),  # ends in the termination
        (1, 1, 2, 3): (4 + 0.5 * 8, [2, 3, 4, 5], 1.0, 0.0),
        (1, 2, 3, 4): (8, [2, 3, 4, 5], 1.0, 0.0),
        (9, 9, 9, 9): (16 + 0.5 * 32, [9, 9, 10, 11], 0.0, 0.25),  # truncation: bootstrap from the real last frame
        (9, 9, 9, 10): (32, [9, 9, 10, 11], 0.0, 0.5),
        # Episode 3's transitions wait until three transitions follow them, or the episode ends.
    }
    buffer.add(stack(20, 20, 21, 22), 0, 256.0, stack(20, 21, 22, 23), False, False)
    firsts = {tuple(buffer.sample(1).obs[0, :, 0, 0].tolist()) for _ in range(300)}
    assert (20, 20, 20, 20) in firsts and (20, 20, 20, 21) not in firsts


# ---------------------------------------------------------------- the update: double DQN on the n-step target


class Linear2(nn.Module):
    """A Q-network on 2 features, with fixed weights, standing in for the CNN (the update only calls it)."""

    def __init__(self, weight):
        super().__init__()
        self.layer = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor(weight))

    def forward(self, x):
        return self.layer(x)


@pytest.mark.parametrize("double_dqn", [False, True])
def test_double_dqn_n_step_target_against_a_hand_computation(double_dqn):
    online = Linear2([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    target = Linear2([[0.0, 2.0], [3.0, 0.0], [1.0, 1.0]])
    batch = Batch(obs=torch.tensor([[1.0, 2.0], [3.0, 1.0]]), actions=torch.tensor([2, 0]),
                  rewards=torch.tensor([1.5, -0.25]), next_obs=torch.tensor([[2.0, 1.0], [1.0, 4.0]]),
                  terminated=torch.tensor([0.0, 0.0]), discounts=torch.tensor([0.99**10, 0.99**3]))
    # next_obs [2, 1]: online Q (2, 1, 1.5) picks action 0; target Q (2, 6, 3) values it 2 (its own max is 6).
    # next_obs [1, 4]: online Q (1, 4, 2.5) picks action 1; target Q (8, 3, 5) values it 3 (its own max is 8).
    bootstrap = [2.0, 3.0] if double_dqn else [6.0, 8.0]
    targets = [1.5 + 0.99**10 * bootstrap[0], -0.25 + 0.99**3 * bootstrap[1]]
    q_taken = [1.5, 3.0]  # online Q of [1, 2] at action 2, of [3, 1] at action 0
    huber = lambda d: 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5
    expected = (huber(q_taken[0] - targets[0]) + huber(q_taken[1] - targets[1])) / 2
    step = make_train_step(online, target, torch.optim.SGD(online.parameters(), lr=0.0), compile=False,
                           double_dqn=double_dqn)
    loss, q_mean = step(batch)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert q_mean.item() == pytest.approx(2.25)


def test_with_augmentation_obs_and_next_obs_get_independent_draws_at_every_update():
    calls = []

    def recording(frames):
        calls.append(frames)
        return drq_augment(frames)

    torch.manual_seed(0)
    q_network = QNetwork(6, dueling=True)
    step = make_train_step(q_network, QNetwork(6, dueling=True), torch.optim.Adam(q_network.parameters()),
                           compile=False, double_dqn=True, augment=recording)
    frames = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    batch = Batch(frames, torch.zeros(8, dtype=torch.long), torch.zeros(8), frames, torch.zeros(8), torch.ones(8))
    step(batch)
    step(batch)
    assert len(calls) == 4 and calls[0] is batch.obs and calls[1] is batch.next_obs
    # Same input frames for obs and next_obs here, yet their augmented versions differ: independent draws.
    torch.manual_seed(1)
    first, second = drq_augment(frames), drq_augment(frames)
    assert not torch.equal(first, second)


# ---------------------------------------------------------------- the augmentation


def coordinate_frames(n: int) -> torch.Tensor:
    """Channels 0 and 2 hold the row index, 1 and 3 the column index, +100 (so that edge pixels stand out)."""
    rows = torch.arange(84).view(84, 1).expand(84, 84) + 100
    cols = torch.arange(84).view(1, 84).expand(84, 84) + 100
    return torch.stack([rows, cols, rows, cols]).to(torch.uint8).expand(n, 4, 84, 84)


def test_augmentation_crop_offsets_edge_padding_and_intensity():
    torch.manual_seed(0)
    n = 4000
    out = drq_augment(coordinate_frames(n)).double()
    intensity = out[:, 0, 43, 0] - out[:, 0, 42, 0]  # neighbouring rows differ by 1 before scaling
    dy = torch.round(out[:, 0, 42, 0] / intensity).long() - 100 - 42 + 4
    dx = torch.round(out[:, 1, 0, 42] / intensity).long() - 100 - 42 + 4
    # Offsets 0..7 in each direction (randint(0, 92 - 84) in Dopamine: +4 never occurs), each about equally often.
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=8)
        assert len(counts) == 8 and scipy.stats.chisquare(counts.numpy()).pvalue > 1e-3
    # Every pixel is the edge-padded frame cropped at (dy, dx), scaled: one crop and one intensity per sample,
    # shared by its 4 frames.
    i = torch.arange(84)
    expected_rows = ((i[None, :] + dy[:, None] - 4).clamp(0, 83) + 100).double() * intensity[:, None]
    expected_cols = ((i[None, :] + dx[:, None] - 4).clamp(0, 83) + 100).double() * intensity[:, None]
    for channel, expected in ((0, expected_rows), (2, expected_rows)):
        assert torch.allclose(out[:, channel, :, 7], expected, atol=1e-3)
        assert torch.allclose(out[:, channel, :, 77], expected, atol=1e-3)
    for channel in (1, 3):
        assert torch.allclose(out[:, channel, 5, :], expected_cols, atol=1e-3)
    # Intensity 1 + 0.05 * clip(N(0, 1), -2, 2): within [0.9, 1.1], each bound taken with probability 2.3 %.
    assert intensity.min() >= 0.9 - 1e-4 and intensity.max() <= 1.1 + 1e-4  # float32 values: 1e-5 apart
    at_bounds = ((intensity - 0.9).abs() < 1e-4) | ((intensity - 1.1).abs() < 1e-4)
    assert 0.03 < at_bounds.double().mean() < 0.065
    inside = intensity[~at_bounds]
    assert abs(inside.mean().item() - 1) < 0.003 and 0.043 < inside.std().item() < 0.05


def inputs_seen_by(network: QNetwork) -> list[torch.Tensor]:
    seen = []
    network.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


def on_the_frame_grid(x: torch.Tensor) -> bool:
    """True if every value is a frame's k / 255: unaugmented (an intensity factor moves values off that grid)."""
    return bool(((x * 255 - (x * 255).round()).abs() < 1e-3).all())


def test_no_augmentation_when_acting_or_scoring_but_in_the_update():
    torch.manual_seed(0)
    q_network = QNetwork(6, dueling=True)
    seen = inputs_seen_by(q_network)
    rb = FrameReplayBuffer(100, 4, (84, 84), torch.device("cpu"), np.random.default_rng(0), 10, GAMMA)
    frames = np.random.default_rng(1).integers(0, 256, (60, 84, 84), dtype=np.uint8)
    for t in range(56):
        rb.add(frames[t:t + 4], 0, 0.0, frames[t + 1:t + 5], t % 20 == 19, False)
    act(q_network, frames[:4], 0.0, np.random.default_rng(0), torch.device("cpu"))
    args = preset_args("drq-eps", srank_states=64)
    check_dormant(q_network, torch.optim.Adam(q_network.parameters()), rb, args, Recorder(), 0, True, Counters())
    assert len(seen) == 3 and all(on_the_frame_grid(x) for x in seen)  # the action; srank's states; ReDo's
    assert torch.equal(seen[0], torch.from_numpy(frames[:4])[None].float() / 255)
    seen.clear()
    step = make_train_step(q_network, QNetwork(6, dueling=True), torch.optim.Adam(q_network.parameters()),
                           compile=False, double_dqn=True, augment=drq_augment)
    step(rb.sample(32))
    assert seen and not any(on_the_frame_grid(x) for x in seen)  # the check above can fail


class Recorder:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars[tag] = value


# ---------------------------------------------------------------- the dueling network and ReDo


def test_dueling_network_is_value_plus_centred_advantage():
    torch.manual_seed(0)
    net = QNetwork(6, "dopamine", dueling=True)
    x = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    features = net.features(x)
    advantage = net.advantage(features)
    assert torch.allclose(net(x), net.value(features) + advantage - advantage.mean(dim=1, keepdim=True))
    assert not hasattr(net, "q") and net.value.out_features == 1 and net.advantage.out_features == 6
    for layer in (net.value, net.advantage):  # Xavier-uniform, zero bias, as every Dopamine layer
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert not layer.bias.any()


def test_recycling_a_dueling_network_zeroes_fc1_columns_in_both_heads():
    torch.manual_seed(0)
    net = QNetwork(6, "dopamine", dueling=True)
    dead = torch.tensor([3, 50, 200, 511])
    with torch.no_grad():
        for layer in (net.conv1, net.conv2, net.conv3, net.fc1, net.value):
            layer.bias.fill_(0.05)  # no neuron dormant by chance
        net.fc1.bias[dead] = -1e3  # dormant: their activation is 0 on every state
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)
    x = torch.randint(0, 256, (32, 4, 84, 84), dtype=torch.uint8)
    for _ in range(2):  # Adam moments everywhere
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    moments = {name: optimizer.state[p]["exp_avg"].clone() for name, p in net.named_parameters()}
    with torch.no_grad():
        outputs = net(x)
    scores = dormant_scores(net, x)
    assert list(scores) == ["conv1", "conv2", "conv3", "fc1"]  # the heads are outputs: never scored
    dead = (scores["fc1"] <= 0).nonzero().flatten()  # the four forced ones, and those random frames leave at 0
    assert set(dead.tolist()) >= {3, 50, 200, 511}
    result = recycle_dormant(net, optimizer, x, tau=0.0, init_fn=nn.init.xavier_uniform_)
    assert result["recycled"]["fc1"] == len(dead)
    with torch.no_grad():
        assert torch.allclose(net(x), outputs, atol=1e-6)  # tau = 0: the outputs do not change
    params = dict(net.named_parameters())
    for head in ("value", "advantage"):
        weight = params[f"{head}.weight"]
        assert not weight[:, dead].any() and not optimizer.state[weight]["exp_avg"][:, dead].any()
        alive = torch.ones(512, dtype=torch.bool)
        alive[dead] = False
        assert torch.equal(weight[:, alive], before[f"{head}.weight"][:, alive])
        assert torch.equal(optimizer.state[weight]["exp_avg"][:, alive], moments[f"{head}.weight"][:, alive])
        assert torch.equal(params[f"{head}.bias"], before[f"{head}.bias"])
    assert not torch.equal(params["fc1.weight"][dead], before["fc1.weight"][dead])  # re-drawn
    assert not params["fc1.bias"][dead].any()


# ---------------------------------------------------------------- the Atari-100k protocol


def test_atari_100k_environment_noops_at_every_game_start_none_after_a_lost_life():
    args = preset_args("drq-eps", env_id="DemonAttack-v4")
    env = make_env(args)
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == 0 and LifeLossTerminal in wrappers(env)
    starts, rng = [], np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    starts.append(ale.getEpisodeFrameNumber())
    lives_lost = games = 0
    while games < 3:
        next_obs, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if not (terminated or truncated):
            continue
        frame = ale.getEpisodeFrameNumber()
        obs, _ = env.reset()
        if "episode" in info:  # the game is over: a new game, after 1..30 no-op frames
            games += 1
            starts.append(ale.getEpisodeFrameNumber())
        else:  # a life lost: terminal for learning, the game goes on from the very same frame
            lives_lost += 1
            assert ale.getEpisodeFrameNumber() == frame
            assert all(np.array_equal(f, next_obs[-1]) for f in obs)  # a new stack of the current frame
    assert lives_lost >= 4
    assert all(1 <= start <= 30 for start in starts) and len(set(starts)) > 1
    env.close()
    evaluation = make_env(args, evaluation=True)  # evaluation: full games, with the same no-op starts
    assert LifeLossTerminal not in wrappers(evaluation)
    evaluation.reset(seed=1)
    assert 1 <= evaluation.unwrapped.ale.getEpisodeFrameNumber() <= 30
    evaluation.close()


def test_ale_pong_ends_a_game_at_its_clock_paying_the_cpu_score_minus_one_and_never_terminating():
    # Pong keeps a 16-bit frame clock in RAM bytes 8 (low) and 9 (high). When it wraps, the console drops into attract
    # mode: the CPU's score (RAM 13) becomes the game number 1, the player's (RAM 14) stays. ALE's Pong reward is the
    # change of player minus CPU score and its game ends only at a score of 21, so the agent is paid CPU score - 1
    # that no point earned and the game never ends: the 27,000-step cap cuts it (the README's Pong finding).
    env = make_env(preset_args("drq-eps", env_id="Pong-v4"), evaluation=True)
    ale = env.unwrapped.ale
    env.reset(seed=0)

    def clock() -> int:
        return int(ale.getRAM()[8]) + 256 * int(ale.getRAM()[9])

    assert clock() == 327 + ale.getEpisodeFrameNumber()  # so it wraps 65,209 frames (16,302 agent steps) in
    total = 0.0
    while ale.getRAM()[13] < 5:  # standing still, the player loses points
        total += env.step(0)[1]
    assert total == -5 and ale.getRAM()[14] == 0 and clock() == 327 + ale.getEpisodeFrameNumber()
    ale.setRAM(8, 0xF0)  # as if 65,193 frames had been played: 16 frames (4 agent steps) to go
    ale.setRAM(9, 0xFF)
    rewards = [env.step(0)[1] for _ in range(8)]
    assert sorted(rewards) == [0.0] * 7 + [4.0] and ale.getRAM()[13] == 1 and ale.getRAM()[14] == 0
    rng = np.random.default_rng(0)
    for _ in range(2_000):  # 8,000 frames of any play: nothing scores, nothing ends
        _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        assert reward == 0 and not terminated and not truncated
    env.close()


# ---------------------------------------------------------------- the preset and the command


def test_the_preset_gives_drq_eps_and_every_value_stays_overridable(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dqn_redo.py", "--preset", "drq-eps", "--learning-rate", "2e-4", "--n-step", "3"])
    args, checkpoint = dqn_redo.parse_command_line()
    assert checkpoint is None
    assert (args.learning_rate, args.n_step) == (2e-4, 3)
    assert (args.double_dqn, args.dueling, args.augmentation, args.target_network_frequency) == (True, True, "drq", 1)
    assert (args.learning_starts, args.epsilon_decay_steps, args.adam_eps, args.redo_batch_size) == (1600, 5000, 1.5e-4,
                                                                                                   64)
    monkeypatch.setattr(sys, "argv", ["dqn_redo.py", "--env-id", "DemonAttack-v4", "--enable-redo"])
    assert dqn_redo.parse_command_line()[0] == Args(enable_redo=True)  # the design card's command is unchanged
    # sweep.py checks its cells' arguments the same way, given as a list: sys.argv is then not read
    assert dqn_redo.parse_command_line(["--preset", "drq-eps", "--n-step", "3"])[0] == dataclasses.replace(
        args, learning_rate=1e-4)


def test_the_readme_drq_command_is_the_preset():
    command = readme_command("drq-command")
    assert command[:2] == ["python", "dqn_redo.py"] and "--preset" in command
    args = preset_args(command[command.index("--preset") + 1])
    assert args.n_step == 10 and args.dueling and args.double_dqn and args.augmentation == "drq"
    assert args.sticky_actions == 0 and args.terminal_on_life_loss and args.noop_max == 30
    assert args.eval_episodes == 100 and args.eval_epsilon == 0.001 and args.total_timesteps == 100_000
