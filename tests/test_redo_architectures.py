"""redo.py on the networks people copy it into: CleanRL's and Stable-Baselines3's DQN, PPO and SAC networks.

Every case is checked against an oracle that does not read redo.py's graph: which input columns (or
channels) of a reader hold a neuron is found by bumping that neuron's output in the real forward pass
and seeing which of the reader's inputs move. Then recycling at tau = 0 must keep the outputs, change
exactly the recycled rows, biases and those columns, zero the optimizer's moments at exactly those
entries, and touch nothing else.
"""

import copy
import math
import operator
import re

import ale_py
import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from redo import dormant_scores, recycle_dormant

gym.register_envs(ale_py)

# ---------------------------------------------------------------- networks in the shape of the real ones


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class CleanRLPPOAtariAgent(nn.Module):
    """CleanRL ppo_atari.py: a Nature trunk in nn.Sequential, actor and critic heads, no forward()."""

    def __init__(self, n_actions: int = 6):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)), nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def get_value(self, x):  # the critic alone, on pixels scaled to [0, 1]
        features = self.network(x / 255.0)
        return self.critic(features)

    def get_action_and_value(self, x, action=None):  # a sampled (or given) action, its log-prob, entropy, value
        return sample_action_and_value(self.network(x / 255.0), self.actor, self.critic, action)


def sample_action_and_value(features, actor, critic, action=None):
    policy = torch.distributions.Categorical(logits=actor(features))
    chosen = policy.sample() if action is None else action
    return chosen, policy.log_prob(chosen), policy.entropy(), critic(features)


class CleanRLSACActor(nn.Module):
    """CleanRL sac_continuous_action.py: fc1, fc2, then fc_mean and fc_logstd read fc2."""

    def __init__(self, obs_dim: int = 11, act_dim: int = 3):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(obs_dim, 256), nn.Linear(256, 256)
        self.fc_mean, self.fc_logstd = nn.Linear(256, act_dim), nn.Linear(256, act_dim)

    def forward(self, x):
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        log_std = torch.tanh(self.fc_logstd(x))
        return self.fc_mean(x), -5 + 0.5 * (2 - -5) * (log_std + 1)


class CleanRLSoftQNetwork(nn.Module):
    """CleanRL sac_continuous_action.py: state and action concatenated at the input."""

    def __init__(self, obs_dim: int = 11, act_dim: int = 3):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(obs_dim + act_dim, 256), nn.Linear(256, 256), nn.Linear(256, 1)

    def forward(self, x, a):
        x = F.relu(self.fc1(torch.cat([x, a], 1)))
        return self.fc3(F.relu(self.fc2(x)))


class TwinCriticLateAction(nn.Module):
    """Two independent critics in one module (as SB3's qf0/qf1); each concatenates the action *after* its first
    hidden layer, in front of it, so the hidden neurons sit at column offset act_dim of the next layer."""

    def __init__(self, obs_dim: int = 11, act_dim: int = 3):
        super().__init__()
        self.q1_fc1, self.q1_fc2, self.q1_out = nn.Linear(obs_dim, 64), nn.Linear(act_dim + 64, 64), nn.Linear(64, 1)
        self.q2_fc1, self.q2_fc2, self.q2_out = nn.Linear(obs_dim, 64), nn.Linear(act_dim + 64, 64), nn.Linear(64, 1)

    def forward(self, obs, act):
        q1 = self.q1_out(F.relu(self.q1_fc2(torch.cat([act, F.relu(self.q1_fc1(obs))], dim=1))))
        q2 = self.q2_out(F.relu(self.q2_fc2(torch.cat([act, F.relu(self.q2_fc1(obs))], dim=1))))
        return q1, q2


class PaddedPooledCNN(nn.Module):
    """Channel-preserving operations between layers: zero padding, max and average pooling, dropout, and an
    NHWC flatten (permute before flatten), with the ReLU in different places."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3)
        self.fc1, self.out = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 4)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x):
        x = F.max_pool2d(F.pad(F.relu(self.conv1(x)), (1, 2, 1, 2)), 2)
        x = self.dropout(F.avg_pool2d(F.relu(self.conv2(x)), 2))
        return self.out(F.relu(self.fc1(x.permute(0, 2, 3, 1).flatten(1))))


class PadAndViewSpellings(nn.Module):
    """The same channel-preserving operations spelled differently: F.pad's arguments by keyword and by position,
    and a ``.view`` flatten (as in PyTorch's DQN tutorial), which the element ids cannot take as a view."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 3)
        self.out = nn.Linear(4 * 7 * 7, 4)

    def forward(self, x):
        x = F.pad(F.relu(self.conv1(x)), pad=(1, 1, 1, 1))
        x = F.pad(F.relu(self.conv2(x)), (0, 1, 0, 1), "constant", 0.0).detach()
        return self.out(F.relu(self.conv3(x).view(x.size(0), -1)))  # flattened before the activation


class ActivatedTwice(nn.Module):
    """A trunk that ends in a ReLU, concatenated with a branch not yet activated, and ReLU applied to both."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.side, self.fc, self.out = nn.Linear(8, 8), nn.Linear(24, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(F.relu(self.fc(F.relu(torch.cat([self.trunk(x), self.side(x)], dim=1)))))


class ActivatedInParts(nn.Module):
    """One layer's output split in two halves, each activated for its own head, the first half twice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.head_a, self.head_b, self.head_c = nn.Linear(8, 2), nn.Linear(8, 2), nn.Linear(8, 1)

    def forward(self, x):
        first, second = self.fc(x).chunk(2, dim=1)
        return self.head_a(F.relu(first)), self.head_b(F.relu(second)), self.head_c(F.relu(first))


class ScaledFeatures(nn.Module):
    """A learned scalar gain on the hidden features."""

    def __init__(self):
        super().__init__()
        self.fc, self.out, self.gain = nn.Linear(8, 16), nn.Linear(16, 2), nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return self.out(F.relu(self.fc(x)) * self.gain)


class DeepSetsCritic(nn.Module):
    """A set encoder (as in entity-based RL): one Linear per entity, max over the entities with a 1-d pool."""

    def __init__(self, entities: int = 5, features: int = 6):
        super().__init__()
        self.entities = entities
        self.phi, self.rho, self.out = nn.Linear(features, 32), nn.Linear(32, 16), nn.Linear(16, 1)

    def forward(self, x):  # x: (batch, entities, features)
        pooled, _ = F.max_pool1d(F.relu(self.phi(x)).transpose(1, 2), self.entities, return_indices=True)
        pooled = pooled.squeeze(-1)
        return self.out(F.relu(self.rho(pooled)))


class InPlaceResidual(nn.Module):
    """torchvision's BasicBlock without batch norm (``out += identity``, in place), the sum read by conv3 without
    an activation in between."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 3)
        self.fc, self.out = nn.Linear(4 * 4 * 4, 16), nn.Linear(16, 2)

    def forward(self, x):
        identity = F.relu(self.stem(x))
        out = self.conv2(F.relu(self.conv1(identity)))
        out += identity
        return self.out(F.relu(self.fc(F.relu(self.conv3(out)).flatten(1))))


class GroupedFirstLayer(nn.Module):
    """A grouped convolution as a recycled layer (its rows are its own), read by a dense layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.out = nn.Conv2d(4, 8, 3, groups=2), nn.Linear(8 * 6 * 6, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(F.relu(self.fc(F.relu(self.conv(x)).flatten(1))))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        inputs = x
        x = self.conv1(F.relu(self.conv0(F.relu(x))))
        return x + inputs


class ConvSequence(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.res_block0, self.res_block1 = ResidualBlock(out_channels), ResidualBlock(out_channels)

    def forward(self, x):
        x = F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1)
        return self.res_block1(self.res_block0(x))


class CleanRLImpalaAgent(nn.Module):
    """CleanRL ppo_procgen.py's IMPALA CNN (narrower): ConvSequences of residual blocks, dense, heads."""

    def __init__(self, n_actions: int = 15):
        super().__init__()
        self.network = nn.Sequential(ConvSequence(3, 8), ConvSequence(8, 16), nn.Flatten(), nn.ReLU(),
                                     nn.Linear(16 * 4 * 4, 64), nn.ReLU())
        self.actor, self.critic = nn.Linear(64, n_actions), nn.Linear(64, 1)

    def get_action_and_value(self, x, action=None):  # Procgen frames come channels-last
        channels_first = x.permute(0, 3, 1, 2)
        return sample_action_and_value(self.network(channels_first / 255.0), self.actor, self.critic, action)


# ---------------------------------------------------------------- the oracle and the checks


def modules_of(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def call(model, forward, x):
    torch.manual_seed(123)  # the same samples in every call of a stochastic forward
    fn = forward or model
    with torch.no_grad():
        return fn(*x) if isinstance(x, tuple) else fn(x)


def outputs_of(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in outputs_of(item)] if isinstance(value, (tuple, list)) else []


def oracle_columns(model, forward, x, layer_name: str, neuron: int, reader_name: str) -> torch.Tensor:
    """The reader's input columns (Linear) or channels (Conv2d) that move when one neuron's output is bumped."""
    modules = modules_of(model)
    layer, reader = modules[layer_name], modules[reader_name]
    seen = []
    capture = reader.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))

    def bump(module, args, output):
        output = output.clone()
        output.select(1 if isinstance(module, nn.Conv2d) else -1, neuron).add_(1e5)
        return output

    try:
        call(model, forward, x)
        handle = layer.register_forward_hook(bump)
        call(model, forward, x)
        handle.remove()
    finally:
        capture.remove()
    changed = seen[0] != seen[1]
    if isinstance(reader, nn.Conv2d):
        return changed.movedim(1, 0).reshape(changed.shape[1], -1).any(dim=1)
    return changed.reshape(-1, changed.shape[-1]).any(dim=0)


def revive_all(model: nn.Module, forward, x, dormant: dict[str, list[int]]) -> None:
    """Raises biases, layer by layer in execution order, until every neuron but the ``dormant`` ones is positive
    somewhere on ``x``: then only those are dormant."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]:
        seen = []
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
        call(model, forward, x)
        handle.remove()
        if not seen:
            continue
        out = seen[0]
        peak = out.movedim(1, 0).flatten(1).amax(dim=1) if isinstance(module, nn.Conv2d) else out.flatten(0, -2).amax(0)
        raise_by = (0.1 - peak).clamp(min=0)
        raise_by[dormant.get(name, [])] = 0
        with torch.no_grad():
            module.bias.add_(raise_by)


def force_dormant(model: nn.Module, dormant: dict[str, list[int]]) -> None:
    """Zero incoming weights and bias: the activation is exactly 0 (for ReLU and tanh alike)."""
    modules = modules_of(model)
    with torch.no_grad():
        for name, neurons in dormant.items():
            modules[name].weight[neurons] = 0
            modules[name].bias[neurons] = 0


def train_a_little(model, forward, x, parameters, steps: int = 3) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    for _ in range(steps):
        torch.manual_seed(7)
        fn = forward or model
        out = fn(*x) if isinstance(x, tuple) else fn(x)
        loss = sum(o.float().pow(2).mean() for o in outputs_of(out) if o.requires_grad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def check_exact_recycling(model, x, dormant: dict[str, list[int]], hidden: list[str], readers: dict[str, list[str]],
                          forward=None, activation=F.relu, not_recyclable: tuple[str, ...] = (), skip=()):
    """Scores exactly ``hidden``; recycling ``dormant`` at tau = 0 keeps the outputs and edits exactly the
    expected entries of parameters and Adam moments."""
    model.eval()
    optimizer = train_a_little(model, forward, x, list(model.parameters()))
    force_dormant(model, dormant)
    revive_all(model, forward, x, dormant)
    modules = modules_of(model)
    # The expected edits, from the oracle: rows and biases of the recycled neurons, their columns in every reader.
    rows = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.named_parameters()}
    columns = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.named_parameters()}
    for layer_name, neurons in dormant.items():
        rows[f"{layer_name}.weight"][neurons] = True
        rows[f"{layer_name}.bias"][neurons] = True
        for neuron in neurons:
            read_by = []
            for reader_name in readers[layer_name]:
                read = oracle_columns(model, forward, x, layer_name, neuron, reader_name)
                columns[f"{reader_name}.weight"][:, read] = True
                read_by += [reader_name] if read.any() else []
            assert read_by, (layer_name, neuron)
    params_before = {name: p.detach().clone() for name, p in model.named_parameters()}
    moments_before = {name: {k: v.clone() for k, v in optimizer.state[p].items()}
                      for name, p in model.named_parameters()}
    outputs_before = outputs_of(call(model, forward, x))

    scores = dormant_scores(model, x, activation=activation, forward=forward, skip=skip)
    assert list(scores) == hidden
    result = recycle_dormant(model, optimizer, x, tau=0.0, activation=activation, forward=forward, skip=skip)
    assert list(result["not_recyclable"]) == list(not_recyclable)
    for layer_name, neurons in dormant.items():
        assert result["recycled"][layer_name] == len(neurons), layer_name

    for before, after in zip(outputs_before, outputs_of(call(model, forward, x))):
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        edited, value = rows[name] | columns[name], p.detach()
        assert torch.equal(value[~edited], params_before[name][~edited]), name  # nothing else touched
        assert torch.count_nonzero(value[columns[name]]) == 0, name  # outgoing weights, even between two recycled
        if name.endswith(".bias"):
            assert torch.count_nonzero(value[rows[name]]) == 0, name
        for key, state in optimizer.state[p].items():
            if torch.is_tensor(state) and state.shape == p.shape:
                assert torch.count_nonzero(state[edited]) == 0, (name, key)
                assert torch.equal(state[~edited], moments_before[name][key][~edited]), (name, key)
            else:
                assert torch.equal(torch.as_tensor(state), torch.as_tensor(moments_before[name][key])), (name, key)
    for layer_name, neurons in dormant.items():  # re-drawn, not left at zero
        redrawn = modules[layer_name].weight.detach()[neurons] * ~columns[f"{layer_name}.weight"][neurons]
        assert (redrawn.flatten(1).abs().sum(dim=1) > 0).all(), layer_name


# ---------------------------------------------------------------- CleanRL


def test_cleanrl_ppo_atari_agent_with_two_heads():
    torch.manual_seed(0)
    agent = CleanRLPPOAtariAgent()
    x = torch.randint(0, 256, (16, 4, 84, 84)).float()
    trunk = ["network.0", "network.2", "network.4", "network.7"]
    check_exact_recycling(
        agent, x, dormant={"network.0": [3], "network.2": [10, 11], "network.4": [0], "network.7": [5, 400]},
        hidden=trunk, readers={"network.0": ["network.2"], "network.2": ["network.4"], "network.4": ["network.7"],
                               "network.7": ["actor", "critic"]},
        forward=agent.get_action_and_value)


def test_cleanrl_ppo_trunk_re_drawn_with_its_own_orthogonal_initializer_as_the_readme_says():
    """README: without init_fn, CleanRL PPO's recycled rows come back at norm 0.58, where layer_init's have 1.41."""
    x = torch.randint(0, 256, (16, 4, 84, 84)).float()
    trunk = ["network.0", "network.2", "network.4", "network.7"]
    norms = {}
    for init in ("default", "orthogonal"):
        torch.manual_seed(0)
        agent = CleanRLPPOAtariAgent()
        modules = modules_of(agent)
        assert all(torch.allclose(modules[name].weight.flatten(1).norm(dim=1), torch.tensor(math.sqrt(2)))
                   for name in trunk)  # layer_init's rows, each of norm sqrt(2)
        force_dormant(agent, {"network.0": [0, 1, 2, 3]})  # it reads pixels: no column of its rows is zeroed
        init_fn = (lambda w: nn.init.orthogonal_(w, math.sqrt(2))) if init == "orthogonal" else None
        result = recycle_dormant(agent, None, x, tau=0.0, forward=agent.get_action_and_value, init_fn=init_fn)
        assert result["recycled"]["network.0"] >= 4  # and any channel dead on these pixels already
        norms[init] = modules["network.0"].weight.detach()[:4].flatten(1).norm(dim=1)
    torch.testing.assert_close(norms["orthogonal"], torch.full((4,), math.sqrt(2)))
    assert ((norms["default"] - 0.58).abs() < 0.05).all(), norms["default"]


def test_a_layer_that_does_not_run_is_named_never_left_out():
    """forward=agent.get_value runs the trunk and the critic, not the actor: scoring names the actor (skip it to score
    the rest knowingly); recycling refuses, since the actor reads the trunk's last layer, whose recycled neurons
    would keep their outgoing weights there and change the policy."""
    torch.manual_seed(0)
    agent = CleanRLPPOAtariAgent()
    x = torch.randint(0, 256, (16, 4, 84, 84)).float()
    with pytest.raises(ValueError) as error:
        dormant_scores(agent, x, forward=agent.get_value)
    assert str(error.value) == ("'actor' did not run in the forward pass, so ReDo would leave it out: pass a forward= "
                                "that runs every layer, or skip=['actor'] to score the others knowingly")
    assert torch.equal(torch.cat(list(dormant_scores(agent, x, forward=agent.get_value, skip=["actor"]).values())),
                       torch.cat(list(dormant_scores(agent, x, forward=agent.get_action_and_value).values())))
    message = ("cannot recycle: 'actor' did not run in the forward pass, so the neurons it may read would keep their "
               "outgoing weights there: pass a forward= that runs every layer, or recycle the submodule that runs")
    for skip in ((), ["actor"]):
        optimizer = torch.optim.Adam(agent.parameters())
        before = {name: p.detach().clone() for name, p in agent.named_parameters()}
        with pytest.raises(ValueError) as error:
            recycle_dormant(agent, optimizer, x, tau=10.0, forward=agent.get_value, skip=skip)
        assert str(error.value) == message
        assert all(torch.equal(p, before[name]) for name, p in agent.named_parameters())
    twin = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # a target network kept in the same module
    holder = nn.ModuleDict({"online": twin, "target": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))})
    with pytest.raises(ValueError, match=r"^'target.0', 'target.2' did not run in the forward pass"):
        dormant_scores(holder, torch.randn(8, 4), forward=holder["online"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_module_is_refused_by_name():
    trunk = torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU()))
    model = nn.Sequential(trunk, nn.Linear(8, 2))
    with pytest.raises(ValueError) as error:
        dormant_scores(model, torch.randn(8, 4))
    assert str(error.value) == ("'0' is a TorchScript module (torch.jit.script/trace), whose layers ReDo cannot "
                                "follow: pass the module before scripting it")


@pytest.mark.seconds(16)
def test_a_compiled_model_is_scored_and_recycled_like_the_module_it_wraps():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    compiled = torch.compile(copy.deepcopy(module))
    x = torch.randn(32, 4)
    scores, compiled_scores = dormant_scores(module, x), dormant_scores(compiled, x)
    assert list(compiled_scores) == [f"_orig_mod.{name}" for name in scores]
    assert all(torch.equal(scores[name], compiled_scores[f"_orig_mod.{name}"]) for name in scores)
    optimizers = []
    for model in (module, compiled):
        optimizer = torch.optim.Adam(model.parameters())
        getattr(model, "_orig_mod", model)(x).square().mean().backward()  # eager in both: the same moments
        optimizer.step()
        torch.manual_seed(1)
        result = recycle_dormant(model, optimizer, x, tau=0.5)
        optimizers.append(optimizer)
    assert result["recycled"]["_orig_mod.0"] > 0 and result["recycled"]["_orig_mod.2"] > 0
    for (name, p), q in zip(module.named_parameters(), compiled.parameters()):
        assert torch.equal(p, q), name
        for key, state in optimizers[0].state[p].items():
            assert torch.equal(state, optimizers[1].state[q][key]), (name, key)


def test_cleanrl_sac_actor_mean_and_logstd_heads():
    torch.manual_seed(0)
    actor = CleanRLSACActor()
    check_exact_recycling(actor, torch.randn(64, 11), dormant={"fc1": [0, 17], "fc2": [255]}, hidden=["fc1", "fc2"],
                          readers={"fc1": ["fc2"], "fc2": ["fc_mean", "fc_logstd"]})


def test_cleanrl_soft_q_network_with_action_at_the_input():
    torch.manual_seed(0)
    critic = CleanRLSoftQNetwork()
    check_exact_recycling(critic, (torch.randn(64, 11), torch.randn(64, 3)), dormant={"fc1": [2], "fc2": [9, 10]},
                          hidden=["fc1", "fc2"], readers={"fc1": ["fc2"], "fc2": ["fc3"]})


def test_twin_critics_with_hidden_features_concatenated_after_the_action():
    torch.manual_seed(0)
    critic = TwinCriticLateAction()
    x = (torch.randn(64, 11), torch.randn(64, 3))
    check_exact_recycling(critic, x, dormant={"q1_fc1": [0, 63], "q2_fc1": [5], "q2_fc2": [1]},
                          hidden=["q1_fc1", "q1_fc2", "q2_fc1", "q2_fc2"],
                          readers={"q1_fc1": ["q1_fc2"], "q2_fc1": ["q2_fc2"], "q2_fc2": ["q2_out"]})
    # q1_fc1's neuron 0 is column 3 of q1_fc2 (after the 3 action columns), neuron 63 column 66.
    assert oracle_columns(critic, None, x, "q1_fc1", 0, "q1_fc2").nonzero().flatten().tolist() == [3]


def test_padding_pooling_dropout_and_an_nhwc_flatten():
    torch.manual_seed(0)
    net = PaddedPooledCNN()
    check_exact_recycling(net, torch.randn(32, 3, 22, 22), dormant={"conv1": [1, 7], "conv2": [0, 15], "fc1": [3]},
                          hidden=["conv1", "conv2", "fc1"],
                          readers={"conv1": ["conv2"], "conv2": ["fc1"], "fc1": ["out"]})


def test_pad_arguments_by_keyword_and_position_and_a_view_flatten():
    torch.manual_seed(0)
    net = PadAndViewSpellings()
    check_exact_recycling(net, torch.randn(32, 3, 10, 10), dormant={"conv1": [0, 5], "conv2": [7], "conv3": [1, 2]},
                          hidden=["conv1", "conv2", "conv3"],
                          readers={"conv1": ["conv2"], "conv2": ["conv3"], "conv3": ["out"]})


def test_relu_applied_again_to_activated_neurons():
    torch.manual_seed(0)
    check_exact_recycling(ActivatedTwice(), torch.randn(64, 8), dormant={"trunk.0": [0, 15], "side": [3], "fc": [2]},
                          hidden=["trunk.0", "side", "fc"],
                          readers={"trunk.0": ["fc"], "side": ["fc"], "fc": ["out"]})


def test_a_layer_activated_in_parts_is_scored_on_each_neurons_mean():
    torch.manual_seed(0)
    net, x = ActivatedInParts(), torch.randn(64, 8)
    with torch.no_grad():
        per_neuron = F.relu(net.fc(x)).mean(dim=0)
    torch.testing.assert_close(dormant_scores(net, x)["fc"], per_neuron / (per_neuron.mean() + 1e-9))
    check_exact_recycling(net, x, dormant={"fc": [1, 7, 8, 15]}, hidden=["fc"],
                          readers={"fc": ["head_a", "head_b", "head_c"]})


def test_a_learned_scalar_gain_on_the_features():
    torch.manual_seed(0)
    check_exact_recycling(ScaledFeatures(), torch.randn(64, 8), dormant={"fc": [0, 9]}, hidden=["fc"],
                          readers={"fc": ["out"]})


def test_deep_sets_max_over_entities():
    torch.manual_seed(0)
    check_exact_recycling(DeepSetsCritic(), torch.randn(64, 5, 6), dormant={"phi": [0, 31], "rho": [4]},
                          hidden=["phi", "rho"], readers={"phi": ["rho"], "rho": ["out"]})


def test_in_place_residual_sum_names_its_writers():
    torch.manual_seed(0)
    check_exact_recycling(InPlaceResidual(), torch.randn(32, 3, 6, 6),
                          dormant={"conv1": [1, 6], "conv3": [2], "fc": [3]}, hidden=["stem", "conv1", "conv3", "fc"],
                          readers={"conv1": ["conv2"], "conv3": ["fc"], "fc": ["out"]},
                          not_recyclable=("stem", "conv2"))


def test_grouped_convolution_recycled_as_a_writer():
    torch.manual_seed(0)
    check_exact_recycling(GroupedFirstLayer(), torch.randn(32, 4, 8, 8), dormant={"conv": [0, 5], "fc": [9]},
                          hidden=["conv", "fc"], readers={"conv": ["fc"], "fc": ["out"]})


def test_impala_resnet_recycles_the_blocks_and_names_the_residual_stream():
    """The residual stream's channels are written by each sequence's first conv and by every block's second
    conv, and read through sums: no weights belong to one writer's channel, so those writers are named as
    not recyclable. The blocks' first convs and the dense layer, each read by known layers, are recycled."""
    torch.manual_seed(0)
    agent = CleanRLImpalaAgent()
    x = torch.randint(0, 256, (16, 16, 16, 3)).float()
    recyclable = ["network.0.res_block0.conv0", "network.0.res_block1.conv0", "network.1.res_block0.conv0",
                  "network.1.res_block1.conv0", "network.4"]
    stream_writers_scored = ["network.0.conv", "network.1.conv"]  # activated (after the pool) before the first block
    check_exact_recycling(
        agent, x,
        dormant={"network.0.res_block0.conv0": [2], "network.1.res_block1.conv0": [0, 15], "network.4": [7]},
        hidden=["network.0.conv", "network.0.res_block0.conv0", "network.0.res_block1.conv0", "network.1.conv",
                "network.1.res_block0.conv0", "network.1.res_block1.conv0", "network.4"],
        readers={"network.0.res_block0.conv0": ["network.0.res_block0.conv1"],
                 "network.1.res_block1.conv0": ["network.1.res_block1.conv1"], "network.4": ["actor", "critic"]},
        forward=agent.get_action_and_value,
        not_recyclable=("network.0.conv", "network.0.res_block0.conv1", "network.0.res_block1.conv1",
                        "network.1.conv", "network.1.res_block0.conv1", "network.1.res_block1.conv1"))
    result = recycle_dormant(agent, None, x, tau=0.5, forward=agent.get_action_and_value)
    assert set(result["recycled"]) == set(recyclable)
    assert not set(result["recycled"]) & set(stream_writers_scored)


# ---------------------------------------------------------------- Stable-Baselines3's real policies


def test_sb3_dqn_q_net():
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [64, 64]}, device="cpu", seed=0)
    obs = torch.randn(64, 4)
    check_exact_recycling(model.q_net, obs, dormant={"q_net.0": [1, 2], "q_net.2": [63]}, hidden=["q_net.0", "q_net.2"],
                          readers={"q_net.0": ["q_net.2"], "q_net.2": ["q_net.4"]})
    # The policy holds the target network too, which its forward does not run: refused, not scored in part.
    target = "'q_net_target.q_net.0', 'q_net_target.q_net.2', 'q_net_target.q_net.4' did not run in the forward pass"
    with pytest.raises(ValueError, match=f"^{target}, so ReDo would leave them out"):
        dormant_scores(model.policy, obs)
    with pytest.raises(ValueError, match=f"^cannot recycle: {target}, so the neurons they may read"):
        recycle_dormant(model.policy, None, obs, tau=0.1)


def test_sb3_sac_actor_and_twin_critic():
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [32, 32]}, device="cpu", seed=0)
    obs, act = torch.randn(64, 3), torch.rand(64, 1) * 2 - 1
    check_exact_recycling(model.actor, obs, dormant={"latent_pi.0": [0], "latent_pi.2": [4, 31]},
                          hidden=["latent_pi.0", "latent_pi.2"],
                          readers={"latent_pi.0": ["latent_pi.2"], "latent_pi.2": ["mu", "log_std"]})
    check_exact_recycling(model.critic, (obs, act), dormant={"qf0.0": [3], "qf1.2": [0, 1]},
                          hidden=["qf0.0", "qf0.2", "qf1.0", "qf1.2"],
                          readers={"qf0.0": ["qf0.2"], "qf1.2": ["qf1.4"]})


def test_sb3_ppo_policy_with_tanh_and_separate_actor_critic_trunks():
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "CartPole-v1", device="cpu", seed=0)  # Tanh, pi and vf trunks of 64, 64
    obs = torch.randn(64, 4)
    check_exact_recycling(
        model.policy, obs, activation=torch.tanh,
        dormant={"mlp_extractor.policy_net.0": [0, 1], "mlp_extractor.value_net.2": [10]},
        hidden=["mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2", "mlp_extractor.value_net.0",
                "mlp_extractor.value_net.2"],
        readers={"mlp_extractor.policy_net.0": ["mlp_extractor.policy_net.2"],
                 "mlp_extractor.value_net.2": ["value_net"]})
    with pytest.raises(ValueError, match="goes through tanh"):  # with ReLU, the default, the tanh is named
        dormant_scores(model.policy, obs)


def test_sb3_nature_cnn_features_extractor():
    from stable_baselines3 import DQN

    env = gym.make("ALE/Pong-v5", obs_type="grayscale")
    env = gym.wrappers.FrameStackObservation(gym.wrappers.ResizeObservation(env, (84, 84)), 4)
    model = DQN("CnnPolicy", env, buffer_size=100, device="cpu", seed=0)
    obs = torch.randint(0, 256, (8, 4, 84, 84)).float()
    q_net = model.q_net
    names = ["features_extractor.cnn.0", "features_extractor.cnn.2", "features_extractor.cnn.4",
             "features_extractor.linear.0"]
    check_exact_recycling(q_net, obs, dormant={names[2]: [5], names[3]: [0]}, hidden=names,
                          readers={names[2]: [names[3]], names[3]: ["q_net.0"]})
    env.close()


# ---------------------------------------------------------------- networks redo.py scores but refuses to recycle


def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_refused_unchanged(model, x, message: str, **kwargs) -> None:
    """recycle_dormant raises ``message`` and changes neither a parameter nor an optimizer moment."""
    optimizer = train_a_little(model, None, x, list(model.parameters()))
    before = parameters_of(model)
    moments = {name: optimizer.state[p]["exp_avg"].clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError) as error:
        recycle_dormant(model, optimizer, x, tau=0.5, **kwargs)
    assert str(error.value) == message
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) and torch.equal(optimizer.state[p]["exp_avg"], moments[name]), name


class LeakyMLP(nn.Module):
    """An MLP critic with LeakyReLU(0.2), as many continuous-control codebases build it."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2),
                                 nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x)


def test_another_activation_is_named_in_the_error_with_how_to_pass_it():
    torch.manual_seed(0)
    model, x = LeakyMLP(), torch.randn(64, 8)
    hint = ("'net.0' goes through leaky_relu (if leaky_relu is the network's nonlinearity, pass "
            "activation=F.leaky_relu, or the module that applies it, e.g. activation=nn.LeakyReLU(0.2)) before 'net.2' "
            "reads it")
    with pytest.raises(ValueError) as error:
        dormant_scores(model, x)
    assert str(error.value) == hint
    assert_refused_unchanged(model, x, f"cannot recycle: {hint}")
    # Following the hint: the module itself (its slope included) is the activation, and recycling is exact.
    check_exact_recycling(model, x, dormant={"net.0": [3, 9], "net.2": [0]}, hidden=["net.0", "net.2"],
                          readers={"net.0": ["net.2"], "net.2": ["net.4"]}, activation=nn.LeakyReLU(0.2))


class Lambda(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


@pytest.mark.parametrize("operation, named", [(lambda h: h.flip(-1), "flip"), (lambda h: h.cumsum(-1), "cumsum"),
                                               (lambda h: F.threshold(h, 0.1, 0.0), "_threshold")])
def test_the_activation_hint_is_given_only_for_a_function_of_torch_nn_functional(operation, named):
    # A flip keeps the shape as an activation does; it once came with "pass activation=that function".
    model = nn.Sequential(nn.Linear(8, 16), Lambda(operation), nn.Linear(16, 2))
    recycle_message = f"cannot recycle: '0' goes through {named}"
    if named == "_threshold":
        recycle_message += (" (if threshold is the network's nonlinearity, pass activation=F.threshold, or the module "
                            "that applies it, e.g. activation=nn.LeakyReLU(0.2))")
    recycle_message += " before '2' reads it"
    assert_refused_unchanged(model, torch.randn(16, 8), recycle_message)


def test_an_activation_equal_to_relu_on_the_batch_only_is_refused_on_every_batch():
    """ReLU6 equals ReLU on a batch below 6: it is still refused there, as on a batch reaching 6, so that a run does not
    fail at a later check; passed as the activation, it is scored and recycled exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU6(), nn.Linear(32, 32), nn.ReLU6(), nn.Linear(32, 2))
    small, large = 0.01 * torch.randn(64, 8), 100 * torch.randn(64, 8)
    assert model[0](small).max() < 1 and model[0](large).max() > 6
    messages = []
    for x in (small, large):
        with pytest.raises(ValueError, match=r"^'0' goes through hardtanh") as error:
            dormant_scores(model, x)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    check_exact_recycling(model, torch.randn(64, 8), dormant={"0": [1, 5], "2": [7]}, hidden=["0", "2"],
                          readers={"0": ["2"], "2": ["4"]}, activation=nn.ReLU6())


class SimbaBlock(nn.Module):
    """SimBa (Lee et al. 2024): a pre-LayerNorm residual MLP block, x + W2 relu(W1 LN(x)), 4x wide inside."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.down(F.relu(self.up(self.norm(x))))


class SimbaCritic(nn.Module):
    """SimBa's critic: an input embedding, pre-LN residual blocks, a final LayerNorm, then Q."""

    def __init__(self, obs_dim: int = 11, act_dim: int = 3, width: int = 32):
        super().__init__()
        self.embed = nn.Linear(obs_dim + act_dim, width)
        self.blocks = nn.ModuleList([SimbaBlock(width), SimbaBlock(width)])
        self.final_norm, self.q = nn.LayerNorm(width), nn.Linear(width, 1)

    def forward(self, obs, action):
        x = self.embed(torch.cat([obs, action], dim=-1))
        for block in self.blocks:
            x = block(x)
        return self.q(self.final_norm(x))


class BroBlock(nn.Module):
    """BRO (Nauman et al. 2024): x + LN(W2 relu(LN(W1 x)))."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.norm1 = nn.Linear(width, width), nn.LayerNorm(width)
        self.fc2, self.norm2 = nn.Linear(width, width), nn.LayerNorm(width)

    def forward(self, x):
        return x + self.norm2(self.fc2(F.relu(self.norm1(self.fc1(x)))))


class BroNetCritic(nn.Module):
    """BroNet's critic: Dense -> LN -> ReLU, then BRO blocks, then Q."""

    def __init__(self, obs_dim: int = 11, act_dim: int = 3, width: int = 32):
        super().__init__()
        self.input_layer, self.input_norm = nn.Linear(obs_dim + act_dim, width), nn.LayerNorm(width)
        self.blocks = nn.Sequential(BroBlock(width), BroBlock(width))
        self.q = nn.Linear(width, 1)

    def forward(self, obs, action):
        x = F.relu(self.input_norm(self.input_layer(torch.cat([obs, action], dim=-1))))
        return self.q(self.blocks(x))


def test_pre_layernorm_residual_critics_are_scored_and_refused_for_recycling():
    torch.manual_seed(0)
    x = (torch.randn(64, 11), torch.randn(64, 3))
    simba = SimbaCritic()
    # Scored: the layers with an activation of their own (each block's inner layer). The residual stream's
    # writers (the embedding, each block's down-projection) have none.
    assert list(dormant_scores(simba, x)) == ["blocks.0.up", "blocks.1.up"]
    assert_refused_unchanged(simba, x, "cannot recycle: 'embed' is followed by layer_norm, which mixes the layer's "
                                       "neurons, so recycling could not keep the outputs unchanged")
    bro = BroNetCritic()
    scores = dormant_scores(bro, x)  # scored on the activation after the norm
    assert list(scores) == ["input_layer", "blocks.0.fc1", "blocks.1.fc1"]
    normalized = F.relu(bro.blocks[0].norm1(bro.blocks[0].fc1(F.relu(bro.input_norm(bro.input_layer(
        torch.cat(x, dim=-1)))))))
    mean_abs = normalized.abs().mean(dim=0)
    torch.testing.assert_close(scores["blocks.0.fc1"], mean_abs / (mean_abs.mean() + 1e-9))
    assert_refused_unchanged(bro, x, "cannot recycle: 'input_layer' is followed by layer_norm, which mixes the "
                                     "layer's neurons, so recycling could not keep the outputs unchanged")


class NoisyLinear(nn.Module):
    """A factorized-Gaussian noisy layer (Fortunato et al. 2018), in the shape of CleanRL's rainbow_atari.py and
    torchrl's: learned mu and sigma, noise kept in buffers, F.linear on mu + sigma * epsilon."""

    def __init__(self, in_features: int, out_features: int, sigma_zero: float = 0.5):
        super().__init__()
        bound = in_features ** -0.5
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma_zero * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma_zero * bound))
        self.register_buffer("weight_epsilon", torch.zeros(out_features, in_features))
        self.register_buffer("bias_epsilon", torch.zeros(out_features))
        self.reset_noise()

    @staticmethod
    def scaled_noise(size: int) -> torch.Tensor:
        noise = torch.randn(size)
        return noise.sign() * noise.abs().sqrt()

    def reset_noise(self) -> None:
        noise_in, noise_out = self.scaled_noise(self.weight_mu.shape[1]), self.scaled_noise(self.weight_mu.shape[0])
        self.weight_epsilon.copy_(torch.outer(noise_out, noise_in))
        self.bias_epsilon.copy_(noise_out)

    def forward(self, x):
        return F.linear(x, self.weight_mu + self.weight_sigma * self.weight_epsilon,
                        self.bias_mu + self.bias_sigma * self.bias_epsilon)


class NoisyDuelingNetwork(nn.Module):
    """A Rainbow-style network: the Nature convolutions, then noisy dense layers (a hidden one, then noisy value
    and advantage heads)."""

    def __init__(self, n_actions: int = 6):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                                   nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
        self.hidden = NoisyLinear(64 * 7 * 7, 128)
        self.value, self.advantage = NoisyLinear(128, 1), NoisyLinear(128, n_actions)

    def forward(self, x):
        h = F.relu(self.hidden(self.convs(x / 255.0)))
        advantage = self.advantage(h)
        return self.value(h) + advantage - advantage.mean(dim=1, keepdim=True)


def test_noisy_layers_are_scored_and_their_readers_refused_for_recycling():
    """A NoisyLinear is no nn.Linear: its weight is computed, so ReDo cannot edit its rows or columns. Its own neurons
    are scored, as are the layers it reads; nothing is left out silently, and recycling is refused."""
    torch.manual_seed(0)
    model, x = NoisyDuelingNetwork(), torch.randint(0, 256, (16, 4, 84, 84)).float()
    scores = dormant_scores(model, x)
    assert list(scores) == ["convs.0", "convs.2", "convs.4", "hidden"]  # the noisy heads are outputs
    with torch.no_grad():
        features = model.convs(x / 255.0)
        weight = model.hidden.weight_mu + model.hidden.weight_sigma * model.hidden.weight_epsilon
        bias = model.hidden.bias_mu + model.hidden.bias_sigma * model.hidden.bias_epsilon
        mean_abs = F.relu(features @ weight.T + bias).abs().mean(dim=0)
    torch.testing.assert_close(scores["hidden"], mean_abs / (mean_abs.mean() + 1e-9))
    assert_refused_unchanged(model, x, "cannot recycle: 'hidden' (NoisyLinear), which reads 'convs.4', is not an "
                                       "nn.Linear/nn.Conv2d, so the outgoing weights of 'convs.4''s neurons cannot "
                                       "be zeroed")


class RecurrentEncoder(nn.Module):
    """A conv encoder and a dense layer whose activation goes into an LSTM (R2D2-style), then Q."""

    def __init__(self, n_actions: int = 6):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 8, stride=4), nn.Linear(8 * 20 * 20, 32)
        self.lstm, self.q = nn.LSTM(32, 16, batch_first=True), nn.Linear(16, n_actions)

    def forward(self, x):
        h = F.relu(self.fc(F.relu(self.conv(x)).flatten(1)))
        out, _ = self.lstm(h[:, None])
        return self.q(out[:, -1])


def test_a_layer_read_by_an_lstm_is_refused_until_the_lstm_is_skipped():
    """The LSTM is a hidden layer ReDo cannot score: an error names it; skipped, the layers before it are scored,
    and the one it reads cannot be recycled."""
    torch.manual_seed(0)
    model, x = RecurrentEncoder(), torch.rand(8, 1, 84, 84)
    message = unhandled_message("lstm", "LSTM", "lstm")
    with pytest.raises(ValueError, match=re.escape(message)):
        dormant_scores(model, x)
    assert_refused_unchanged(model, x, message)
    assert list(dormant_scores(model, x, skip=["lstm"])) == list(dormant_scores(model, x, skip="lstm"))
    assert list(dormant_scores(model, x, skip="lstm")) == ["conv", "fc"]
    assert_refused_unchanged(model, x, "cannot recycle: 'fc' goes through lstm before 'q' reads it", skip=["lstm"])


class EnsembleHeadCritic(nn.Module):
    """A shared trunk read by an ensemble of Q-heads held in one parameter (a vectorized linear layer, as in
    EDAC/SAC-N implementations) and applied with einsum: no nn.Linear reads the trunk."""

    def __init__(self, obs_dim: int = 11, members: int = 5):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head_weight = nn.Parameter(torch.randn(members, 64, 1) / 8)
        self.head_bias = nn.Parameter(torch.zeros(members, 1, 1))

    def forward(self, obs):
        return torch.einsum("bi,eio->ebo", self.trunk(obs), self.head_weight) + self.head_bias


def test_a_layer_read_only_by_an_unknown_op_is_scored_and_refused_not_taken_for_an_output():
    torch.manual_seed(0)
    model, x = EnsembleHeadCritic(), torch.randn(64, 11)
    assert list(dormant_scores(model, x)) == ["trunk.0", "trunk.2"]  # trunk.2 is hidden, not an output layer
    assert_refused_unchanged(model, x, "cannot recycle: 'trunk.2' is read only by einsum, not by an "
                                       "nn.Linear/nn.Conv2d, so the outgoing weights of its neurons are unknown")



LOG_HINT = (" (values that leave torch may come back unseen: to log them, keep the tensor, e.g. self.h = h.detach(), "
            "and convert it after the forward pass)")
SCALAR_READS = {"item": lambda t: t.item(), "__float__": float, "__int__": int,
                "__complex__": lambda t: complex(t).real, "__bool__": bool,
                "__index__": lambda t: operator.index(t.to(torch.long))}


class ThroughPython(nn.Module):
    """A head that reads the encoder's features through a step taken outside torch (a clip in numpy, a lookup in a
    list), beside a decoder that trains the encoder: the tensor that comes back is new, and nothing links it to fc2."""

    def __init__(self, way: str, decoder: bool):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 3)
        self.decoder = nn.Linear(32, 8) if decoder else None
        self.way = way

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        features = h.detach() if self.way == "numpy" else h.detach().cpu()  # .cpu() is followed
        if self.way == "numpy":
            back = torch.from_numpy(np.clip(features.numpy(), 0.0, 1.0))
        elif self.way == "tolist":
            back = torch.tensor(features.tolist())
        elif self.way == "__array__":
            back = torch.from_numpy(np.array(features))
        else:  # one neuron's mean, as a Python number
            back = torch.full(h.shape, float(SCALAR_READS[self.way](features[:, 0].mean())))
        q = self.head(back)
        return q if self.decoder is None else (q, self.decoder(h))


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")  # numpy 2 asks torch's
@pytest.mark.parametrize("way", ["numpy", "tolist", "__array__", *SCALAR_READS])
def test_a_hidden_activation_handed_to_python_is_scored_and_refused_never_left_out(way):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    alone = ThroughPython(way, decoder=False)
    assert list(dormant_scores(alone, x)) == ["fc1", "fc2"]  # not fc1 alone, with fc2 taken for an output layer
    before = parameters_of(alone)
    with pytest.raises(ValueError) as error:
        recycle_dormant(alone, None, x, tau=0.5)
    assert str(error.value) == (f"cannot recycle: 'fc2' is read only by {way}, not by an nn.Linear/nn.Conv2d, so "
                                f"the outgoing weights of its neurons are unknown{LOG_HINT}")
    assert all(torch.equal(p, before[name]) for name, p in alone.named_parameters())
    # With a decoder reading fc2 too, recycling would zero the decoder's columns and keep the head's reading.
    assert_refused_unchanged(ThroughPython(way, decoder=True), x, f"cannot recycle: 'fc2' is read by decoder, and "
                             f"also by {way}, not by an nn.Linear/nn.Conv2d, so some outgoing weights of its neurons "
                             f"are unknown{LOG_HINT}")


class KeptForALog(nn.Module):
    """An MLP that keeps its last Q-values in numpy, and its features as a tensor, for a log: an output layer's values
    leaving torch are no reader, and neither is a hidden layer's kept in torch (the refusal's advice)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.fc(x))
        q = self.out(h)
        self.features, self.last_q, self.greedy = h.detach(), q.detach().numpy(), q[0].argmax().item()
        return q


def test_values_kept_for_a_log_leave_the_layers_as_they_are():
    torch.manual_seed(0)
    model = KeptForALog()
    check_exact_recycling(model, torch.randn(64, 8), dormant={"fc": [0, 9]}, hidden=["fc"], readers={"fc": ["out"]})
    assert model.features.numpy().shape == (64, 16)


class PreActivationThroughPython(nn.Module):
    """fc2's output clipped in numpy before its ReLU: the tensor that comes back is new, and fc2, read by no layer
    ReDo can see, looked like an output layer (once neither scored nor named)."""

    def __init__(self, returns: str = "q"):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 3)
        self.returns = returns

    def forward(self, x):
        z = self.fc2(F.relu(self.fc1(x)))
        back = torch.from_numpy(np.clip(z.detach().numpy(), -5.0, 5.0))
        q = self.head(F.relu(back))
        self.last_q = q.detach().numpy()  # an output kept for a log: no reader
        return q if self.returns == "q" else q.argmax(dim=1)  # returned through an operation: still an output


UNSEEN = ("'fc2''s output leaves torch through numpy before any activation and is not returned by the model, so ReDo "
          "cannot tell an output kept for a log from a hidden layer whose values come back as a new tensor: keep the "
          "forward pass in torch up to the activation (to log values, keep the tensor, e.g. self.q = q.detach(), and "
          "convert it after the pass), or pass skip=['fc2'] if it is an output layer")


@pytest.mark.parametrize("returns", ["q", "argmax"])
def test_a_layer_whose_pre_activation_output_leaves_torch_unreturned_is_refused_until_skipped(returns):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    model = PreActivationThroughPython(returns)
    before = parameters_of(model)
    with pytest.raises(ValueError) as scoring:
        dormant_scores(model, x)
    with pytest.raises(ValueError) as recycling:
        recycle_dormant(model, None, x, tau=0.5)
    assert str(scoring.value) == str(recycling.value) == UNSEEN
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    # Skipped knowingly: fc1 is scored and recycled exactly (fc2 reads it in torch); the head's log stays an output.
    assert list(dormant_scores(model, x, skip=["fc2"])) == ["fc1"]
    with torch.no_grad():
        model.fc1.weight[:3], model.fc1.bias[:3] = 0.0, -1.0
        outputs = model(x)
    assert recycle_dormant(model, None, x, tau=0.0, skip=["fc2"])["recycled"] == {"fc1": 3}
    with torch.no_grad():
        assert torch.equal(model(x), outputs)


class StreamToTheOutput(nn.Module):
    """Two writers summed into a stream that the head reads and that is also added to the head's output: the writers
    are named, not recycled, as any residual stream's, and the layer before them is recycled exactly."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.head = (nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16),
                                                   nn.Linear(16, 3))

    def forward(self, x):
        h = F.relu(self.fc1(x))
        stream = self.fc2(h) + self.fc3(h)
        return self.head(F.relu(stream)) + stream[:, :3]


def test_a_residual_stream_reaching_the_outputs_leaves_its_writers_named_and_the_rest_recycled_exactly():
    torch.manual_seed(0)
    check_exact_recycling(StreamToTheOutput(), torch.randn(64, 8), dormant={"fc1": [2, 7]}, hidden=["fc1"],
                          readers={"fc1": ["fc2", "fc3"]}, not_recyclable=("fc2", "fc3"))


SIDE_PATHS = {  # fc2's values, before (z) or after (h) its ReLU, on a way to the outputs beside the head that reads h
    "z.sum": (lambda z, h: z.sum(-1, keepdim=True), "is reduced across neurons by sum on a way"),
    "z.mean": (lambda z, h: z.mean(-1, keepdim=True), "is reduced across neurons by mean on a way"),
    "z[:, :3]": (lambda z, h: z[:, :3], "is added to another layer's output on a way"),
    "0.1 * z[:, :3]": (lambda z, h: 0.1 * z[:, :3], "is added to another layer's output on a way"),
    "h[:, :3]": (lambda z, h: h[:, :3], "is added to another layer's output on a way"),
    "z through numpy": (lambda z, h: torch.from_numpy(z.detach().numpy())[:, :3], "numpy"),
}


class SidePathToTheOutput(nn.Module):
    """A head reading fc2's activation, plus fc2's values brought to the output another way (a skip from the
    pre-activations, a sum, a round trip through numpy): recycling fc2 would change them."""

    def __init__(self, side):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.side = side

    def forward(self, x):
        z = self.fc2(F.relu(self.fc1(x)))
        h = F.relu(z)
        return self.head(h) + self.side(z, h)


@pytest.mark.parametrize("path", SIDE_PATHS)
def test_a_hidden_layer_whose_values_reach_the_outputs_another_way_is_scored_and_refused(path):
    side, why = SIDE_PATHS[path]
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    model = SidePathToTheOutput(side)
    assert list(dormant_scores(model, x)) == ["fc1", "fc2"]
    with torch.no_grad():  # dead neurons: at tau = 0, redo.py of 3bf167b recycled them, moving the outputs 0.16-5.1
        model.fc2.weight[:4], model.fc2.bias[:4] = 0.0, -1.0
    if why == "numpy":
        message = (f"cannot recycle: 'fc2' is read by head, and its values before the activation also by numpy, which "
                   f"recycling would change{LOG_HINT}")
    else:
        message = (f"cannot recycle: 'fc2' {why} to the model's output besides the layers that read it (head), so "
                   "recycling would change the outputs")
    assert_refused_unchanged(model, x, message)


# ---------------------------------------------------------------- layers of other kinds: never left out silently


def unhandled_message(name: str, kind: str, op: str) -> str:
    return (f"'{name}' ({kind}) computes {op}, a layer ReDo cannot score or recycle (it handles nn.Linear and "
            f"nn.Conv2d), and another layer reads it; pass skip=['{name}'] to score the other layers without it")


class Conv1dEncoderMLP(nn.Module):
    """A 1-d convolution over a short history of observations, then an MLP: the convolution's channels are neurons
    ReDo does not score."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc1, self.fc2, self.out = nn.Conv1d(6, 16, 3), nn.Linear(16 * 8, 64), nn.Linear(64, 64), \
            nn.Linear(64, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(F.relu(self.conv(x)).flatten(1))))))


class GRUEncoderMLP(nn.Module):
    """A GRU over the observation sequence (a recurrent policy's encoder), then an MLP."""

    def __init__(self):
        super().__init__()
        self.gru, self.fc1, self.fc2, self.out = nn.GRU(6, 32, batch_first=True), nn.Linear(32, 64), \
            nn.Linear(64, 64), nn.Linear(64, 3)

    def forward(self, x):
        features, _ = self.gru(x.transpose(1, 2))
        return self.out(F.relu(self.fc2(F.relu(self.fc1(features[:, -1])))))


class RawWeightFirstLayer(nn.Module):
    """A first layer written as ``x @ W + b`` on raw parameters, then nn.Linear layers."""

    def __init__(self):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(60, 32) / 8), nn.Parameter(torch.zeros(32))
        self.fc1, self.fc2, self.out = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(F.relu(x.flatten(1) @ self.w + self.b))))))


class Conv1dBetweenLinears(nn.Module):
    """A Linear layer, a 1-d convolution over its features, then the output layer: before, the convolution's
    neurons were silently left out of the scores."""

    def __init__(self):
        super().__init__()
        self.fc1, self.conv, self.out = nn.Linear(60, 64), nn.Conv1d(4, 8, 3), nn.Linear(8 * 14, 3)

    def forward(self, x):
        return self.out(F.relu(self.conv(F.relu(self.fc1(x.flatten(1))).view(-1, 4, 16))).flatten(1))


class EncoderMLP(nn.Module):
    """Another kind of first layer on the (6, 10) observation, then the same MLP."""

    encoders = {  # kind: (module, its features from the observation, how many)
        "conv3d": (lambda: nn.Conv3d(1, 4, (3, 3, 1)), lambda m, x: m(x[:, None, :, :, None]), 4 * 4 * 8),
        "conv_transpose2d": (lambda: nn.ConvTranspose2d(1, 2, 3), lambda m, x: m(x[:, None]), 2 * 8 * 12),
        "attention": (lambda: nn.MultiheadAttention(10, 2, batch_first=True), lambda m, x: m(x, x, x)[0], 60),
        "bilinear": (lambda: nn.Bilinear(60, 60, 32), lambda m, x: m(x.flatten(1), x.flatten(1)), 32)}

    def __init__(self, kind: str):
        super().__init__()
        make, self.features, size = self.encoders[kind]
        self.encoder, self.fc1, self.fc2, self.out = make(), nn.Linear(size, 64), nn.Linear(64, 64), nn.Linear(64, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(F.relu(self.features(self.encoder, x).flatten(1)))))))


@pytest.mark.parametrize("network, name, kind, op", [
    (Conv1dEncoderMLP, "conv", "Conv1d", "conv1d"), (GRUEncoderMLP, "gru", "GRU", "gru"),
    (RawWeightFirstLayer, "w", "a parameter", "matmul"),
    (lambda: EncoderMLP("conv3d"), "encoder", "Conv3d", "conv3d"),
    (lambda: EncoderMLP("conv_transpose2d"), "encoder", "ConvTranspose2d", "conv_transpose2d"),
    (lambda: EncoderMLP("attention"), "encoder", "MultiheadAttention", "multi_head_attention_forward"),
    (lambda: EncoderMLP("bilinear"), "encoder", "Bilinear", "bilinear")])
def test_a_layer_of_another_kind_is_refused_by_name_and_the_rest_recycled_exactly_once_skipped(network, name, kind,
                                                                                               op):
    torch.manual_seed(0)
    x = torch.randn(32, 6, 10)
    message = unhandled_message(name, kind, op)
    with pytest.raises(ValueError) as error:
        dormant_scores(network(), x)
    assert str(error.value) == message
    assert_refused_unchanged(network(), x, message)
    with pytest.raises(ValueError) as error:
        dormant_scores(network(), x, skip=[name, "fc3"])
    assert str(error.value).startswith("skip names ['fc3'], which is not among the layers ReDo cannot handle")
    with pytest.raises(ValueError) as error:
        dormant_scores(network(), x, skip=["fc4", "fc3"])
    assert str(error.value) == (f"skip names ['fc3', 'fc4'], which are not among the layers ReDo cannot handle in "
                                f"this forward pass (['{name}']) or those that did not run (none)")
    check_exact_recycling(network(), x, dormant={"fc1": [1, 7], "fc2": [0, 63]}, hidden=["fc1", "fc2"],
                          readers={"fc1": ["fc2"], "fc2": ["out"]}, skip=[name])


def test_a_layer_of_another_kind_between_two_linears_is_refused_not_left_out():
    torch.manual_seed(0)
    model, x = Conv1dBetweenLinears(), torch.randn(32, 6, 10)
    message = unhandled_message("conv", "Conv1d", "conv1d")
    with pytest.raises(ValueError) as error:
        dormant_scores(model, x)
    assert str(error.value) == message
    assert list(dormant_scores(model, x, skip=["conv"])) == ["fc1"]
    assert_refused_unchanged(model, x, "cannot recycle: 'fc1' goes through conv1d before 'out' reads it",
                             skip=["conv"])


class NormalizedEmbeddedInputs(nn.Module):
    """Parameters that make no neurons: a LayerNorm and a learned gain on the observation, an embedding of a
    discrete input, and PPO's state-independent log-std, exponentiated for the output."""

    def __init__(self):
        super().__init__()
        self.norm, self.gain, self.embedding = nn.LayerNorm(60), nn.Parameter(torch.ones(60)), nn.Embedding(5, 4)
        self.fc1, self.fc2, self.out = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 3)
        self.log_std = nn.Parameter(torch.zeros(1, 3))

    def forward(self, x):
        ids = (x[:, 0, 0].abs() * 2).long().clamp(max=4)
        h = torch.cat([self.norm(x.flatten(1)) * self.gain, self.embedding(ids)], dim=-1)
        mean = self.out(F.relu(self.fc2(F.relu(self.fc1(h)))))
        return mean, torch.exp(self.log_std.expand_as(mean))


def test_parameters_that_make_no_neurons_need_no_skip():
    torch.manual_seed(0)
    with pytest.raises(ValueError) as error:
        dormant_scores(NormalizedEmbeddedInputs(), torch.randn(32, 6, 10), skip=["norm"])
    assert str(error.value) == ("skip names ['norm'], which is not among the layers ReDo cannot handle in this "
                                "forward pass (none) or those that did not run (none)")
    check_exact_recycling(NormalizedEmbeddedInputs(), torch.randn(32, 6, 10), dormant={"fc1": [2], "fc2": [5, 6]},
                          hidden=["fc1", "fc2"], readers={"fc1": ["fc2"], "fc2": ["out"]})


class BagOfTokens(nn.Module):
    """Tokens embedded and averaged, then an MLP, as text-observation agents encode an instruction."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 16)
        self.fc1, self.fc2, self.out = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, x):
        tokens = (x.abs() * 3).long().clamp(max=9)
        return self.out(F.relu(self.fc2(F.relu(self.fc1(self.embedding(tokens).mean(1))))))


def test_embedded_tokens_averaged_are_data_not_a_layer():
    # The mean of the embedding's rows was once refused as a layer "'embedding' (Embedding) computes mean".
    torch.manual_seed(0)
    check_exact_recycling(BagOfTokens(), torch.randn(32, 7), dormant={"fc1": [1, 4], "fc2": [30]},
                          hidden=["fc1", "fc2"], readers={"fc1": ["fc2"], "fc2": ["out"]})
    # Not a door for layers: the averaged rows times a parameter, summed, are a layer, refused by the parameter's name.
    model = BagOfTokens()
    model.w = nn.Parameter(torch.randn(16, 32))
    model.fc1.forward = lambda e: (e[:, :, None] * model.w).sum(1)
    with pytest.raises(ValueError, match=r"^'w' \(a parameter\) computes sum, a layer ReDo cannot score or recycle"):
        dormant_scores(model, torch.randn(32, 7))


class StackedConv1dEncoder(nn.Module):
    """Two 1-d convolutions in a Sequential, then an MLP: the error names the first layer left out, then (skipped)
    the next, by their full module names."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(6, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.ReLU(), nn.Flatten())
        self.fc1, self.fc2, self.out = nn.Linear(8 * 6, 32), nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(self.encoder(x))))))


def test_stacked_layers_of_another_kind_are_named_in_order():
    torch.manual_seed(0)
    model, x = StackedConv1dEncoder(), torch.randn(32, 6, 10)
    for skip, name in (((), "encoder.0"), (["encoder.0"], "encoder.2")):
        with pytest.raises(ValueError) as error:
            dormant_scores(model, x, skip=skip)
        assert str(error.value) == unhandled_message(name, "Conv1d", "conv1d")
    assert list(dormant_scores(model, x, skip=["encoder.0", "encoder.2"])) == ["fc1", "fc2"]


class SideOutput(nn.Module):
    """A hidden layer read by the output layer and also returned through another operation (a sort, or an einsum
    head): recycling it would change that second output, so it is refused."""

    def __init__(self, sides: str):
        super().__init__()
        self.sides, self.fc1, self.out, self.value = sides, nn.Linear(8, 16), nn.Linear(16, 2), nn.Linear(16, 1)
        self.head = nn.Parameter(torch.randn(16, 3)) if "einsum" in sides else None

    def forward(self, x):
        h = F.relu(self.fc1(x))
        side = {"sort": lambda: torch.sort(h, dim=-1).values, "einsum": lambda: torch.einsum("bi,io->bo", h, self.head)}
        return self.out(h), self.value(h), *[side[name]() for name in self.sides.split(", ")]


@pytest.mark.parametrize("sides", ["sort", "einsum", "einsum, sort"])
def test_a_layer_read_by_a_linear_and_by_another_operation_to_the_outputs_is_refused(sides):
    torch.manual_seed(0)
    model, x = SideOutput(sides), torch.randn(32, 8)
    assert list(dormant_scores(model, x)) == ["fc1"]
    assert_refused_unchanged(model, x, f"cannot recycle: 'fc1' is read by out, value, and also by {sides}, not by an "
                                       "nn.Linear/nn.Conv2d, so some outgoing weights of its neurons are unknown")


class SortedIntoConv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.conv, self.out = nn.Linear(8, 16), nn.Conv1d(1, 2, 3), nn.Linear(28, 2)

    def forward(self, x):
        return self.out(F.relu(self.conv(torch.sort(F.relu(self.fc1(x)), dim=-1).values[:, None])).flatten(1))


def test_a_layer_whose_output_reaches_a_skipped_layer_is_refused_for_recycling():
    torch.manual_seed(0)
    model, x = SortedIntoConv1d(), torch.randn(32, 8)
    assert list(dormant_scores(model, x, skip=["conv"])) == ["fc1"]
    assert_refused_unchanged(model, x, "cannot recycle: 'fc1' goes through sort before 'conv' reads it", skip=["conv"])


class LinearThenConv1dLayers(nn.Module):
    """A Linear layer, a hidden 1-d convolution, and a 1-d convolution as the output layer (a decoder)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.conv1, self.conv2 = nn.Linear(8, 32), nn.Conv1d(4, 4, 3), nn.Conv1d(4, 2, 3)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(F.relu(self.fc1(x)).view(-1, 4, 8))))


def test_a_hidden_layer_of_another_kind_read_only_by_another_such_layer_is_refused():
    torch.manual_seed(0)
    model, x = LinearThenConv1dLayers(), torch.randn(32, 8)
    with pytest.raises(ValueError) as error:
        dormant_scores(model, x)
    assert str(error.value) == unhandled_message("conv1", "Conv1d", "conv1d")  # conv2, an output, needs no skip
    assert list(dormant_scores(model, x, skip=["conv1"])) == ["fc1"]


class ResidualIntoRawWeight(nn.Module):
    """A residual MLP block whose stream is read by a raw-parameter layer (skipped), then the output layer."""

    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)
        self.w = nn.Parameter(torch.randn(16, 16) / 4)

    def forward(self, x):
        h = F.relu(self.fc0(x))
        return self.out(F.relu((h + F.relu(self.fc1(h))) @ self.w))


def test_the_writers_of_a_residual_stream_read_by_a_skipped_layer_are_scored_and_named_not_recycled():
    torch.manual_seed(0)
    model, x = ResidualIntoRawWeight(), torch.randn(32, 8)
    assert list(dormant_scores(model, x, skip=["w"])) == ["fc0", "fc1"]
    before = parameters_of(model)
    result = recycle_dormant(model, None, x, tau=1.0, skip=["w"])
    assert result["recycled"] == {} and list(result["not_recyclable"]) == ["fc0", "fc1"]
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


class SpectralNormCritic(nn.Module):
    """A critic whose hidden layer is spectrally normalized (a parametrization computes its weight)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 32))
        self.fc2, self.out = nn.Linear(32, 32), nn.Linear(32, 1)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


def test_a_spectrally_normalized_layer_is_scored_as_a_foreign_layer_not_refused_as_another_kind():
    torch.manual_seed(0)
    model, x = SpectralNormCritic().eval(), torch.randn(32, 8)
    scores = dormant_scores(model, x)
    assert list(scores) == ["fc1", "fc2"]
    with torch.no_grad():
        mean_abs = F.relu(model.fc1(x)).abs().mean(dim=0)
    torch.testing.assert_close(scores["fc1"], mean_abs / (mean_abs.mean() + 1e-9))
    with pytest.raises(ValueError) as error:
        recycle_dormant(model, None, x, tau=0.5)
    assert str(error.value) == ("cannot recycle: 'fc1' (ParametrizedLinear) computes its output with linear on a "
                                "weight that is not an nn.Linear/nn.Conv2d weight, so ReDo cannot re-draw its "
                                "neurons' incoming weights")


class MaskedLinear(nn.Linear):
    """An nn.Linear that applies its weight through a fixed binary mask, as pruning code does."""

    def __init__(self, *args):
        super().__init__(*args)
        self.register_buffer("mask", (torch.rand_like(self.weight) > 0.3).float())

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedCritic(nn.Module):
    def __init__(self, masked: str):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 1)
        setattr(self, masked, MaskedLinear(*{"fc1": (8, 32), "fc2": (32, 32)}[masked]))

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


@pytest.mark.parametrize("masked", ["fc1", "fc2"])
def test_an_nn_linear_subclass_that_computes_its_weight_is_scored_under_its_name_and_refused_for_recycling(masked):
    # It was taken for a layer that did not run (its F.linear named no module), and scoring refused it as such.
    torch.manual_seed(0)
    model, x = MaskedCritic(masked), torch.randn(32, 8)
    scores = dormant_scores(model, x)
    assert list(scores) == ["fc1", "fc2"]
    with torch.no_grad():
        activations = {"fc1": F.relu(model.fc1(x))}
        activations["fc2"] = F.relu(model.fc2(activations["fc1"]))
    for name, activation in activations.items():
        mean_abs = activation.abs().mean(dim=0)
        torch.testing.assert_close(scores[name], mean_abs / (mean_abs.mean() + 1e-9))
    message = {"fc1": "cannot recycle: 'fc1' (MaskedLinear) computes its output with linear on a weight computed from "
                      "its own, so ReDo cannot re-draw its neurons' incoming weights",
               "fc2": "cannot recycle: 'fc2' (MaskedLinear), which reads 'fc1', computes the weight it applies, so the "
                      "outgoing weights of 'fc1''s neurons cannot be zeroed"}[masked]
    assert_refused_unchanged(model, x, message)


class CriticWithAnOddFc2(nn.Module):
    """A critic whose second nn.Linear is applied with einsum on its weight instead of its forward, or with F.linear
    on the first 16 rows of its weight."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 32)
        self.out = nn.Linear(32 if spelling == "einsum" else 16, 1)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if self.spelling == "einsum":
            return self.out(F.relu(torch.einsum("bi,oi->bo", h, self.fc2.weight) + self.fc2.bias))
        return self.out(F.relu(F.linear(h, self.fc2.weight[:16], self.fc2.bias[:16])))


@pytest.mark.parametrize("spelling, how", [("einsum", "einsum, not with its forward, F.linear or F.conv2d"),
                                           ("linear", "linear on a weight of another shape computed from its own")])
def test_an_nn_linear_applied_otherwise_than_by_its_forward_is_refused_by_its_name(spelling, how):
    # einsum: its weight is taken by einsum, so it counts as run; it was once refused under a second entry of the same
    # name that no layer read, and scoring returned fc1 alone. linear: taken for fc2's 32 neurons, its 16 outputs once
    # broke the tracer with a shape error from inside redo.py.
    torch.manual_seed(0)
    model, x = CriticWithAnOddFc2(spelling), torch.randn(32, 8)
    message = (f"'fc2' (Linear) is applied with {how}, so ReDo can neither score nor recycle it, and another layer "
               "reads it; pass skip=['fc2'] to score the other layers without it")
    with pytest.raises(ValueError) as error:
        dormant_scores(model, x)
    assert str(error.value) == message
    assert list(dormant_scores(model, x, skip=["fc2"])) == ["fc1"]
    assert_refused_unchanged(model, x, f"cannot recycle: 'fc1' goes through {spelling} before 'out' reads it",
                             skip=["fc2"])


def test_an_nn_conv2d_applied_to_part_of_its_weight_is_refused_by_its_name():
    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.out = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(4 * 4 * 4, 1)

        def forward(self, x):
            h = F.relu(self.conv1(x))
            return self.out(F.relu(F.conv2d(h, self.conv2.weight[:4], self.conv2.bias[:4])).flatten(1))

    with pytest.raises(ValueError) as error:
        dormant_scores(ConvNet(), torch.randn(8, 3, 8, 8))
    assert str(error.value).startswith("'conv2' (Conv2d) is applied with conv2d on a weight of another shape computed "
                                       "from its own, so ReDo can neither score nor recycle it")


class ChannelSelectingCNN(nn.Module):
    """A conv encoder whose second layer reads every other channel of the first, picked by an index tensor or a
    boolean mask (or, as the reference, a strided slice)."""

    def __init__(self, index: str):
        super().__init__()
        self.index = {"tensor": torch.tensor([0, 2, 4, 6]), "mask": torch.tensor([True, False] * 4),
                      "slice": slice(0, None, 2)}[index]
        self.conv0, self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        h = F.relu(self.conv1(F.relu(self.conv0(x))))
        return self.fc(F.relu(self.conv2(h[:, self.index])).flatten(1))


@pytest.mark.parametrize("index", ["tensor", "mask", "slice"])
def test_channels_picked_by_an_index_tensor_or_a_mask_are_followed_exactly(index):
    # An index tensor was once turned into ids of its own shape: every pick read conv1's last channel, whose recycling
    # would have zeroed all four of conv2's input channels; a mask's picks did not match, and conv1 passed for an
    # output layer, scored by nobody.
    torch.manual_seed(0)
    check_exact_recycling(ChannelSelectingCNN(index), torch.randn(16, 3, 10, 10), dormant={"conv1": [0, 4]},
                          hidden=["conv0", "conv1", "conv2"],
                          readers={"conv1": ["conv2"]})


def test_a_hidden_layer_used_as_an_index_is_scored_and_refused_for_recycling():
    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out, self.table = nn.Linear(8, 16), nn.Linear(4, 2), torch.randn(100, 4)

        def forward(self, x):
            rows = (F.relu(self.fc(x)) * 10).to(torch.long)[:, 0]
            return self.out(self.table[rows])

    model, x = Lookup(), torch.randn(16, 8)
    assert list(dormant_scores(model, x)) == ["fc"]
    before = parameters_of(model)
    with pytest.raises(ValueError) as error:
        recycle_dormant(model, None, x, tau=0.5)  # no gradient reaches fc through the lookup: no Adam state to check
    assert str(error.value) == "cannot recycle: 'fc' is used as an index before 'out' reads it"
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


class WrittenFeatures(nn.Module):
    """A hidden layer's activations written in place: into a buffer of features beside input columns and a
    constant, or over one of its own columns (column 0 gets neuron 1's values); flipped first, or with an index
    computed from the layer itself, which ReDo cannot follow."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.fc1, self.fc2, self.out = nn.Linear(8, 16), nn.Linear(20, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if self.spelling == "overwritten":
            features = torch.cat([h, torch.zeros(x.shape[0], 4)], dim=1)
            features[:, 0] = features[:, 1]
        else:
            features = torch.zeros(x.shape[0], 20)
            features[:, 2:18] = h.flip(-1) if self.spelling == "flipped" else h
            features[:, :2] = x[:, :2]
            features[:, 18] = 1.0
            if self.spelling == "indexed":
                features[torch.arange(x.shape[0]), (h[:, 0] * 0).to(torch.long)] = 2.0
        return self.out(F.relu(self.fc2(features)))


@pytest.mark.parametrize("spelling", ["buffer", "overwritten"])
def test_activations_written_in_place_are_followed_exactly(spelling):
    # Once lost: written into a buffer, fc1 passed for an output layer and was left unscored in silence; a column
    # overwritten kept the ids of the neuron it no longer held.
    torch.manual_seed(0)
    check_exact_recycling(WrittenFeatures(spelling), torch.randn(32, 8), dormant={"fc1": [1, 5], "fc2": [3]},
                          hidden=["fc1", "fc2"], readers={"fc1": ["fc2"], "fc2": ["out"]})


@pytest.mark.parametrize("spelling, how", [("flipped", "goes through flip"),
                                           ("indexed", "is used as an index")])
def test_activations_written_in_place_through_what_redo_cannot_follow_are_refused_for_recycling(spelling, how):
    torch.manual_seed(0)
    model, x = WrittenFeatures(spelling), torch.randn(32, 8)
    assert list(dormant_scores(model, x)) == ["fc1", "fc2"]
    assert_refused_unchanged(model, x, f"cannot recycle: 'fc1' {how} before 'fc2' reads it")


class TensordotHead(nn.Module):
    """An output layer applied with tensordot on its weight: the hidden layer's only reader is no nn.Linear call."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 32), nn.Linear(32, 2)

    def forward(self, x):
        return torch.tensordot(F.relu(self.fc(x)), self.out.weight.T, dims=1) + self.out.bias


def test_an_output_layer_applied_with_tensordot_counts_as_run_and_its_input_is_refused_for_recycling():
    # Its weight reached tensordot through .T, so it was once reported as a layer that did not run.
    torch.manual_seed(0)
    model, x = TensordotHead(), torch.randn(32, 8)
    scores = dormant_scores(model, x)
    assert list(scores) == ["fc"]
    mean_abs = F.relu(model.fc(x)).detach().abs().mean(dim=0)
    torch.testing.assert_close(scores["fc"], mean_abs / (mean_abs.mean() + 1e-9))
    assert_refused_unchanged(model, x, "cannot recycle: 'fc' is read only by tensordot, not by an nn.Linear/nn.Conv2d, "
                                       "so the outgoing weights of its neurons are unknown")


class GlobalPooledCNN(nn.Module):
    """A conv encoder whose channels are pooled over all positions by a reduction rather than a pooling op, as
    many image encoders write it; each spelling keeps one value per channel for the Linear that reads it."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3)
        self.fc, self.out = nn.Linear(16, 32), nn.Linear(32, 2)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        pooled = {"mean": lambda: h.mean((2, 3)),
                  "amax": lambda: torch.amax(h, dim=(-2, -1)),
                  "sum keepdim": lambda: h.sum(dim=(2, 3), keepdim=True).flatten(1),
                  "max values": lambda: h.flatten(2).max(dim=-1).values,
                  "logsumexp": lambda: torch.logsumexp(h.flatten(2), 2)}[self.spelling]()  # log(n) for zeros
        return self.out(F.relu(self.fc(pooled)))


@pytest.mark.parametrize("spelling", ["mean", "amax", "sum keepdim", "max values"])
def test_a_global_pool_written_as_a_reduction_is_recycled_exactly(spelling):
    # Refused for recycling ("goes through mean before 'fc' reads it") until reductions were followed like pools.
    torch.manual_seed(0)
    check_exact_recycling(GlobalPooledCNN(spelling), torch.randn(32, 3, 8, 8),
                          dormant={"conv1": [2], "conv2": [0, 9, 15], "fc": [4]}, hidden=["conv1", "conv2", "fc"],
                          readers={"conv1": ["conv2"], "conv2": ["fc"], "fc": ["out"]})


class DeepSetsMaxCritic(DeepSetsCritic):
    """The set encoder with the max over entities written as a reduction."""

    def forward(self, x):
        return self.out(F.relu(self.rho(F.relu(self.phi(x)).max(dim=1).values)))


def test_deep_sets_max_over_entities_as_a_reduction():
    torch.manual_seed(0)
    check_exact_recycling(DeepSetsMaxCritic(), torch.randn(64, 5, 6), dormant={"phi": [0, 31], "rho": [4]},
                          hidden=["phi", "rho"], readers={"phi": ["rho"], "rho": ["out"]})


class ChannelMeanCNN(GlobalPooledCNN):
    """A reduction across the channels, which mixes neurons: a mean over dim 1 before the flatten."""

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.out(F.relu(self.fc(h.mean(dim=1, keepdim=True).flatten(1)[:, :16])))


def test_a_reduction_across_neurons_is_scored_and_refused_for_recycling():
    torch.manual_seed(0)
    model, x = ChannelMeanCNN("mean"), torch.randn(32, 3, 8, 8)
    assert list(dormant_scores(model, x)) == ["conv1", "conv2", "fc"]
    assert_refused_unchanged(model, x, "cannot recycle: 'conv2' is reduced across neurons by mean before 'fc' reads it")


class BroadcastProductLayer(nn.Module):
    """A hidden layer written as a broadcast product with a parameter and a sum, h @ W.T in disguise."""

    def __init__(self, normalized: bool = False):
        super().__init__()
        self.normalized = normalized
        self.fc1, self.out = nn.Linear(6, 16), nn.Linear(12, 3)
        self.w = nn.Parameter(torch.randn(12, 16) * 0.2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.normalize(h, dim=-1) if self.normalized else h  # an op ReDo cannot follow
        return self.out(F.relu((h[:, None, :] * self.w).sum(-1)))


@pytest.mark.parametrize("normalized, states", [(False, 16), (False, 1), (True, 16)])
def test_a_hidden_layer_made_by_a_broadcast_product_with_a_parameter_is_refused_by_name(normalized, states):
    # Once left out in silence: scoring returned fc1 alone, without a word about w's 12 neurons. One state: the
    # product has as many elements as w; normalized: the hidden layer comes through an op ReDo cannot follow.
    torch.manual_seed(0)
    model, x = BroadcastProductLayer(normalized), torch.randn(states, 6)
    with pytest.raises(ValueError) as error:
        dormant_scores(model, x)
    assert str(error.value) == ("'w' (a parameter) computes mul, a layer ReDo cannot score or recycle (it handles "
                                "nn.Linear and nn.Conv2d), and another layer reads it; pass skip=['w'] to score the "
                                "other layers without it")
    assert list(dormant_scores(model, x, skip=["w"])) == ["fc1"]


def test_a_reduction_that_maps_zeros_elsewhere_is_refused_for_recycling():
    # logsumexp of a dormant channel's zeros is log(n): zeroing its outgoing weights would change the outputs.
    torch.manual_seed(0)
    model, x = GlobalPooledCNN("logsumexp"), torch.randn(32, 3, 8, 8)
    assert list(dormant_scores(model, x)) == ["conv1", "conv2", "fc"]
    assert_refused_unchanged(model, x, "cannot recycle: 'conv2' goes through logsumexp before 'fc' reads it")


class WholeActivationStatistic(nn.Module):
    """A critic that also returns a statistic of its whole hidden activation (e.g. for a regularizer)."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.fc1, self.fc2, self.out = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 1)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        statistic = {"mean": lambda: h.mean(), "amax dim=()": lambda: torch.amax(h, dim=()),
                     "max_pool1d across features": lambda: F.max_pool1d(h[:, None], 4)}[self.spelling]()
        return self.out(h), statistic


@pytest.mark.parametrize("spelling", ["mean", "amax dim=()", "max_pool1d across features"])
def test_a_reduction_of_a_whole_activation_that_reaches_the_outputs_is_refused_for_recycling(spelling):
    torch.manual_seed(0)
    model, x = WholeActivationStatistic(spelling), torch.randn(32, 8)
    assert list(dormant_scores(model, x)) == ["fc1", "fc2"]
    op = spelling.split()[0]
    assert_refused_unchanged(model, x, f"cannot recycle: 'fc2' is read by out, and also by {op}, not by an "
                                       "nn.Linear/nn.Conv2d, so some outgoing weights of its neurons are unknown")


class PooledKeepdimConvHead(GlobalPooledCNN):
    """A global pool kept 4-d (keepdim, positional) for a 1x1 convolution that reads it, as a squeeze step does."""

    def __init__(self):
        super().__init__("mean")
        self.fc = nn.Conv2d(16, 32, 1)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.out(F.relu(self.fc(torch.sum(h, (2, 3), True))).flatten(1))


def test_a_keepdim_global_pool_read_by_a_1x1_convolution_is_recycled_exactly():
    torch.manual_seed(0)
    check_exact_recycling(PooledKeepdimConvHead(), torch.randn(32, 3, 8, 8),
                          dormant={"conv1": [2], "conv2": [0, 9, 15], "fc": [4]}, hidden=["conv1", "conv2", "fc"],
                          readers={"conv1": ["conv2"], "conv2": ["fc"], "fc": ["out"]})


class FunctionalWeights(nn.Module):
    """F.linear from the model's own forward on a weight of no nn.Linear: a parameter of the model itself, a masked
    nn.Linear weight, or a buffer of a submodule."""

    def __init__(self, weight: str):
        super().__init__()
        self.weight = weight
        self.fc1, self.out = nn.Linear(6, 16), nn.Linear(16, 3)
        if weight == "masked":
            self.fc2 = nn.Linear(16, 16)
        elif weight == "parameter":
            self.w = nn.Parameter(torch.randn(16, 16) * 0.3)
        else:
            self.frozen = nn.Module()
            self.frozen.register_buffer("w", torch.randn(16, 16) * 0.3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        w = {"parameter": lambda: self.w, "buffer": lambda: self.frozen.w,
             "masked": lambda: self.fc2.weight * (torch.arange(16) % 2)}[self.weight]()
        return self.out(F.relu(F.linear(h, w)))


@pytest.mark.parametrize("weight, name", [("parameter", "w"), ("masked", "fc2"), ("buffer", "<linear call 1>")])
def test_a_functional_layer_in_the_models_own_forward_is_named_after_its_weight(weight, name):
    # The model's own forward is named "": a root parameter's layer was scored under the name "".
    torch.manual_seed(0)
    model, x = FunctionalWeights(weight), torch.randn(32, 6)
    scores = dormant_scores(model, x)
    assert list(scores) == ["fc1", name]  # masked: fc2's own entry, not taken for a layer that did not run
    with torch.no_grad():  # the layer's activation, computed here by hand
        w = {"parameter": lambda: model.w, "buffer": lambda: model.frozen.w,
             "masked": lambda: model.fc2.weight * (torch.arange(16) % 2)}[weight]()
        mean_abs = F.relu(F.linear(F.relu(model.fc1(x)), w)).abs().mean(dim=0)
    torch.testing.assert_close(scores[name], mean_abs / (mean_abs.mean() + 1e-9))
    kind, what = ("Linear", "computes the weight it applies") if weight == "masked" else (
        "a functional call", "is not an nn.Linear/nn.Conv2d")
    with pytest.raises(ValueError) as error:
        recycle_dormant(model, None, x, tau=0.5)
    assert str(error.value) == (f"cannot recycle: '{name}' ({kind}), which reads 'fc1', {what}, so the outgoing "
                                "weights of 'fc1''s neurons cannot be zeroed")


class SpectralNormCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 8, 3))
        self.conv2, self.out = nn.Conv2d(8, 8, 3), nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        return self.out(F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1))


def test_a_spectrally_normalized_convolution_is_scored_per_channel():
    torch.manual_seed(0)
    model, x = SpectralNormCNN().eval(), torch.randn(16, 3, 8, 8)
    scores = dormant_scores(model, x)
    with torch.no_grad():
        mean_abs = F.relu(model.conv1(x)).abs().mean(dim=(0, 2, 3))
    torch.testing.assert_close(scores["conv1"], mean_abs / (mean_abs.mean() + 1e-9))


class FunctionalFirstLayer(nn.Module):
    """A first hidden layer computed with F.linear on a buffer, read by an nn.Linear."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Module()
        self.frozen.register_buffer("w", torch.randn(16, 6))
        self.fc, self.out = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc(F.relu(F.linear(x, self.frozen.w)))))


def test_a_functional_first_layer_is_scored_and_refused_for_recycling_by_its_call():
    torch.manual_seed(0)
    model, x = FunctionalFirstLayer(), torch.randn(32, 6)
    assert list(dormant_scores(model, x)) == ["<linear call 1>", "fc"]
    assert_refused_unchanged(model, x, "cannot recycle: '<linear call 1>' (a functional call) computes its output "
                                       "with linear on a weight that is not an nn.Linear/nn.Conv2d weight, so ReDo "
                                       "cannot re-draw its neurons' incoming weights")
