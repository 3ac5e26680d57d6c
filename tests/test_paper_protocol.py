"""The paper's network and Atari protocol by default (Dopamine's code), and CleanRL's on request."""

import math
import re
import shlex

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tyro
from stable_baselines3.common.atari_wrappers import FireResetEnv, NoopResetEnv

from dqn_redo import Args, LifeLossTerminal, QNetwork, epsilon_at, make_env
from redo import recycle_dormant
from test_dqn import ROOT


def flax_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Flax/XLA 'SAME' (lax.padtype_to_pads): output ceil(size / stride), the extra pixel after."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    return total // 2, total - total // 2


def frames(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 4, 84, 84), generator=g, dtype=torch.uint8)


def wrappers(env) -> list[type]:
    found = []
    while env is not None:
        found.append(type(env))
        env = getattr(env, "env", None)
    return found


# ---------------------------------------------------------------- networks


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_dopamine_network_is_flax_same_padding(memory_format):
    """Layer by layer with pads from Flax's SAME rule, on unpadded convolutions, and flattened NCHW."""
    torch.manual_seed(0)
    net = QNetwork(6, "dopamine").to(memory_format=memory_format)
    obs = frames()
    x, sizes = obs.float() / 255.0, []
    with torch.no_grad():
        for conv in (net.conv1, net.conv2, net.conv3):
            before, after = flax_same_pads(x.shape[-1], conv.kernel_size[0], conv.stride[0])
            x = F.relu(F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, conv.bias, conv.stride))
            sizes.append(x.shape[-1])
        expected = net.q(F.relu(net.fc1(x.flatten(1))))
        torch.testing.assert_close(net(obs), expected, rtol=1e-5, atol=1e-6)
    assert sizes == [21, 11, 11]
    assert flax_same_pads(21, 4, 2) == (1, 2)  # the uneven pad of conv2
    assert net.fc1.in_features == 64 * 11 * 11 == 7744


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_nature_network_is_valid_padding(memory_format):
    """The textbook Nature CNN; the forward applies conv3's ReLU after the flatten (the same values)."""
    torch.manual_seed(0)
    net = QNetwork(6, "nature").to(memory_format=memory_format)
    obs, relu = frames(8), F.relu
    with torch.no_grad():
        x = relu(net.conv1(obs.float() / 255.0))
        assert x.shape[-1] == 20
        x = relu(net.conv2(x))
        assert x.shape[-1] == 9
        x = relu(net.conv3(x))
        assert x.shape[-1] == 7
        assert torch.equal(net(obs), net.q(relu(net.fc1(x.flatten(1)))))
    assert net.fc1.in_features == 3136


def test_dopamine_init_is_xavier_uniform_with_zero_biases():
    torch.manual_seed(0)
    net = QNetwork(18, "dopamine")
    fans = {"conv1": (4 * 64, 32 * 64), "conv2": (32 * 16, 64 * 16), "conv3": (64 * 9, 64 * 9),
            "fc1": (7744, 512), "q": (512, 18)}
    for name, (fan_in, fan_out) in fans.items():
        layer = getattr(net, name)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert torch.count_nonzero(layer.bias) == 0, name
        assert layer.weight.abs().max() <= bound, name
        assert layer.weight.abs().max() > 0.95 * bound, name  # spans the range, not a narrower draw
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1), name
    nature = QNetwork(18, "nature")
    assert nature.fc1.weight.abs().max() <= 1 / math.sqrt(3136) and torch.count_nonzero(nature.fc1.bias) > 500
    assert QNetwork.weight_init("dopamine") is torch.nn.init.xavier_uniform_ and QNetwork.weight_init("nature") is None


def test_recycling_through_the_uneven_pad_keeps_outputs_at_tau_zero():
    torch.manual_seed(0)
    net, obs = QNetwork(6, "dopamine"), frames(32)
    with torch.no_grad():
        for layer, neurons in [(net.conv1, [0, 7, 31]), (net.conv2, [5]), (net.conv3, [2, 60]), (net.fc1, [9, 500])]:
            layer.bias[neurons] = -1e4
    before = net(obs).detach()
    conv2_before = net.conv2.weight.detach().clone()
    result = recycle_dormant(net, None, obs, tau=0.0, init_fn=QNetwork.weight_init("dopamine"))
    assert all(result["recycled"][name] >= n for name, n in [("conv1", 3), ("conv2", 1), ("conv3", 2), ("fc1", 2)])
    torch.testing.assert_close(net(obs), before, rtol=1e-5, atol=1e-6)
    # conv1's recycled channels are conv2's input channels 0, 7, 31, padding or not.
    assert torch.count_nonzero(net.conv2.weight[:, [0, 7, 31]]) == 0
    assert torch.count_nonzero(net.conv1.bias[[0, 7, 31]]) == 0
    bound = math.sqrt(6 / (4 * 64 + 32 * 64))
    assert net.conv1.weight[[0, 7, 31]].abs().max() <= bound
    untouched = [c for c in range(32) if c not in (0, 7, 31)]
    assert torch.equal(net.conv2.weight[:, untouched][[o for o in range(64) if o != 5]],
                       conv2_before[:, untouched][[o for o in range(64) if o != 5]])


# ---------------------------------------------------------------- protocol


@pytest.mark.parametrize("env_id", ["DemonAttack-v4", "DemonAttackNoFrameskip-v4", "ALE/DemonAttack-v5"])
def test_default_protocol_for_every_id(env_id):
    env = make_env(Args(env_id=env_id))
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert ale.getInt("max_num_frames_per_episode") == 4 * 27_000
    assert not {NoopResetEnv, FireResetEnv, LifeLossTerminal} & set(wrappers(env))
    obs, _ = env.reset(seed=0)
    assert all(np.array_equal(frame, obs[0]) for frame in obs)  # no no-op frames before the first observation
    env.close()


def test_sticky_actions_change_the_game_on_a_v4_id():
    """Same seed, same actions: sticky and non-sticky emulators part ways."""
    observations = []
    for sticky in (0.0, 0.25):
        env = make_env(Args(env_id="DemonAttack-v4", sticky_actions=sticky))
        env.reset(seed=3)
        rng, trace = np.random.default_rng(0), []
        for _ in range(300):
            obs, *_ = env.step(int(rng.integers(env.action_space.n)))
            trace.append(obs[-1])
        observations.append(np.stack(trace))
        env.close()
    assert not np.array_equal(observations[0], observations[1])


@pytest.mark.parametrize("terminal_on_life_loss", [False, True])
def test_a_lost_life_is_terminal_only_on_request(terminal_on_life_loss):
    env = make_env(Args(env_id="DemonAttack-v4", terminal_on_life_loss=terminal_on_life_loss))
    env.reset(seed=0)
    ale, rng = env.unwrapped.ale, np.random.default_rng(0)
    lives = ale.lives()
    losses = []
    for _ in range(5000):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if 0 < ale.lives() < lives:
            losses.append(terminated)
        lives = ale.lives()
        if terminated and ale.game_over():
            break
        if terminated:
            env.reset()  # LifeLossTerminal: goes on with the same game
    assert losses and all(t == terminal_on_life_loss for t in losses)
    env.close()


def test_epsilon_is_one_through_the_warm_up_then_decays():
    args = Args(learning_starts=20_000, epsilon_decay_steps=250_000)
    assert [epsilon_at(args, t) for t in (0, 10_000, 19_999, 20_000)] == [1.0, 1.0, 1.0, 1.0]
    assert epsilon_at(args, 20_000 + 125_000) == pytest.approx(0.505)
    assert epsilon_at(args, 270_000) == pytest.approx(0.01) and epsilon_at(args, 10**7) == pytest.approx(0.01)
    cleanrl = Args(learning_starts=20_000, epsilon_decay_steps=250_000, epsilon_after_warmup=False)
    assert epsilon_at(cleanrl, 125_000) == pytest.approx(0.505) and epsilon_at(cleanrl, 10_000) < 1


def readme_command(marker: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", readme, re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))


def test_the_readme_cleanrl_command_gives_cleanrl_stack():
    command = readme_command("cleanrl-command")
    assert command[:2] == ["python", "dqn_redo.py"]
    args = tyro.cli(Args, args=command[2:])
    assert args.network == "nature" and not args.epsilon_after_warmup
    env = make_env(args)
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0
    assert {NoopResetEnv, LifeLossTerminal, FireResetEnv} <= set(wrappers(env))
    layer = env
    while not isinstance(layer, NoopResetEnv):
        layer = layer.env
    assert layer.noop_max == 30
    env.close()
