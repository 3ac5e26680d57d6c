"""redo.py against hand-written reference computations."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from redo import dormant_fractions, dormant_overlap, dormant_scores, recycle_dormant, srank

CONV1, CONV2, CONV3, FC1, OUT = "network.0", "network.2", "network.4", "network.7", "network.9"
HIDDEN = [CONV1, CONV2, CONV3, FC1]


def nature_cnn(n_actions: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3136, 512), nn.ReLU(),
        nn.Linear(512, n_actions),
    )


class Wrapped(nn.Module):
    """Names like a CleanRL QNetwork: network.0 ... network.9."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.network = net

    def forward(self, x):
        return self.network(x / 255.0)


def frames(n: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 4, 84, 84), generator=g).float()


def layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def force_dormant(model: nn.Module, name: str, neurons: list[int]) -> None:
    with torch.no_grad():
        layer(model, name).bias[neurons] = -1e6


def make_all_active(model: nn.Module, names: list[str] = HIDDEN) -> None:
    """Non-negative weights and positive biases: on non-negative inputs no neuron is dormant by chance."""
    with torch.no_grad():
        for name in names:
            layer(model, name).weight.abs_()
            layer(model, name).bias.fill_(0.1)


def reference_scores(model: Wrapped, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Layer by layer, no hooks."""
    net, h, scores = model.network, x / 255.0, {}
    for name, index in [(CONV1, 0), (CONV2, 2), (CONV3, 4)]:
        h = F.relu(net[index](h))
        per_channel = h.abs().mean(dim=(0, 2, 3))
        scores[name] = per_channel / (per_channel.mean() + 1e-9)
    h = F.relu(net[7](h.flatten(1)))
    per_neuron = h.abs().mean(dim=0)
    scores[FC1] = per_neuron / (per_neuron.mean() + 1e-9)
    return scores


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    state = {f"param/{k}": v.detach().clone() for k, v in model.state_dict().items()}
    if optimizer is not None:
        for i, (p, s) in enumerate(optimizer.state.items()):
            for k, v in s.items():
                state[f"opt/{i}/{k}"] = v.clone() if torch.is_tensor(v) else v
    return state


def assert_bit_identical(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        if torch.is_tensor(before[key]):
            assert torch.equal(before[key], after[key]), key
        else:
            assert before[key] == after[key], key


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, x, steps: int = 3) -> None:
    for _ in range(steps):
        out = model(*x) if isinstance(x, tuple) else model(x)
        loss = sum((o**2).mean() for o in (out if isinstance(out, tuple) else (out,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# ---------------------------------------------------------------- scores


def test_scores_equal_reference_and_average_one():
    model, x = Wrapped(nature_cnn()), frames()
    scores, expected = dormant_scores(model, x), reference_scores(model, x)
    assert list(scores) == HIDDEN  # execution order, output layer excluded
    assert [s.numel() for s in scores.values()] == [32, 64, 64, 512]
    for name in HIDDEN:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-6, atol=1e-7)
        assert scores[name].mean().item() == pytest.approx(1.0, rel=1e-5)


def test_scores_of_a_single_state():
    """One state, one element per Linear neuron: the mean is that element."""
    torch.manual_seed(0)
    critic, batch = Critic(), (torch.randn(1, 11), torch.randn(1, 3))
    with torch.no_grad():
        fc1 = F.relu(critic.fc1(torch.cat(batch, dim=1)))[0]
    torch.testing.assert_close(dormant_scores(critic, batch)["fc1"], fc1 / (fc1.mean() + 1e-9))


def test_a_first_hidden_layer_of_one_neuron():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1), nn.ReLU(), nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(32, 8)
    with torch.no_grad():
        model[0].bias.fill_(5.0)  # active on every state
    scores = dormant_scores(model, x)
    assert list(scores) == ["0", "2"]
    torch.testing.assert_close(scores["0"], torch.ones(1))


def test_fractions_are_inclusive_per_layer_and_pooled():
    scores = {"a": torch.tensor([0.0, 0.1, 0.2, 3.7]), "b": torch.tensor([0.1, 1.9])}
    assert dormant_fractions(scores, 0.1) == {"a": 0.5, "b": 0.5, "total": 0.5}
    assert dormant_fractions(scores, 0.0) == {"a": 0.25, "b": 0.0, "total": 1 / 6}
    assert dormant_fractions({"a": torch.tensor([0.0])}, 0.0) == {"a": 1.0, "total": 1.0}
    assert dormant_fractions({}, 0.1) == {"total": 0.0}


@pytest.mark.parametrize("training", [True, False])
def test_scoring_leaves_the_mode_alone_and_records_no_graph(training):
    model, x = Wrapped(nature_cnn()), frames(8)
    model.train(training)
    grad_mode_in_forward = []
    model.register_forward_pre_hook(lambda module, args: grad_mode_in_forward.append(torch.is_grad_enabled()))
    scores = dormant_scores(model, x)
    assert grad_mode_in_forward == [False]  # the scoring pass builds no autograd graph
    assert all(m.training == training for m in model.modules())
    assert all(not s.requires_grad and s.grad_fn is None for s in scores.values())
    assert torch.is_grad_enabled() and all(p.grad is None for p in model.parameters())


def test_tracing_ends_when_forward_raises():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            self.fc1(x)
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        dormant_scores(model, torch.ones(2, 4))
    assert not torch.overrides._get_current_function_mode_stack()  # the tracing mode is gone
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------- recycling


def test_tau_zero_keeps_outputs_with_dormant_neurons_in_every_layer():
    model, x = Wrapped(nature_cnn()), frames()
    for name, neurons in [(CONV1, [0, 5]), (CONV2, [3]), (CONV3, [7, 8, 63]), (FC1, [1, 100, 511])]:
        force_dormant(model, name, neurons)
    before_out = model(x).detach()
    before_params = [p for p in model.parameters()]
    before_ptrs = [p.data_ptr() for p in model.parameters()]
    result = recycle_dormant(model, None, x, tau=0.0)
    assert all(result["recycled"][name] >= n for name, n in [(CONV1, 2), (CONV2, 1), (CONV3, 3), (FC1, 3)])
    torch.testing.assert_close(model(x), before_out, rtol=1e-5, atol=1e-5)
    # In place: same tensor objects, same storage.
    assert all(a is b for a, b in zip(model.parameters(), before_params))
    assert [p.data_ptr() for p in model.parameters()] == before_ptrs


def test_recycled_set_equals_reference_scores():
    model, x = Wrapped(nature_cnn()), frames()
    force_dormant(model, CONV2, [1, 2])
    force_dormant(model, FC1, list(range(0, 512, 7)))
    tau = 0.5
    expected = {name: s <= tau for name, s in reference_scores(model, x).items()}
    before = copy.deepcopy(model)
    result = recycle_dormant(model, None, x, tau=tau)
    for name in HIDDEN:
        # A recycled neuron's bias is set to 0; its row of weights may also lose columns to the layer before.
        changed = layer(model, name).bias != layer(before, name).bias
        assert torch.equal(changed, expected[name]), name
        assert torch.all(layer(model, name).bias[expected[name]] == 0)
        assert result["recycled"][name] == int(expected[name].sum()), name
    assert OUT not in result["recycled"] and OUT not in result["scores"]
    assert torch.equal(layer(model, OUT).bias, layer(before, OUT).bias)


def test_conv_to_linear_zeroes_exactly_the_channel_block():
    model, x = Wrapped(nature_cnn()), frames()
    c = 13
    make_all_active(model)
    force_dormant(model, CONV3, [c])
    before = layer(model, FC1).weight.detach().clone()
    result = recycle_dormant(model, None, x, tau=0.0)
    assert result["recycled"] == {CONV1: 0, CONV2: 0, CONV3: 1, FC1: 0}
    assert result["scores"][CONV3][c] == 0
    after = layer(model, FC1).weight
    block = torch.zeros(3136, dtype=torch.bool)
    block[c * 49 : (c + 1) * 49] = True  # conv3 output is 64 x 7 x 7, flattened NCHW
    assert torch.all(after[:, block] == 0)
    assert torch.equal(after[:, ~block], before[:, ~block])


def test_weight_between_two_recycled_neurons_is_zero():
    model, x = Wrapped(nature_cnn()), frames()
    c, j = 5, 42
    force_dormant(model, CONV3, [c])
    force_dormant(model, FC1, [j])
    recycle_dormant(model, None, x, tau=0.0)
    row = layer(model, FC1).weight[j]
    assert torch.all(row[c * 49 : (c + 1) * 49] == 0)
    assert torch.count_nonzero(row) > 3000  # the rest of the row was re-drawn

    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    force_dormant(mlp, "0", [3])
    force_dormant(mlp, "2", [9])
    recycle_dormant(mlp, None, torch.randn(32, 6), tau=0.0)
    assert mlp[2].weight[9, 3] == 0
    assert torch.count_nonzero(mlp[2].weight[9]) == 15


def test_redraw_follows_the_layers_default_init_and_zeroes_bias():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(400, 1024), nn.ReLU(), nn.Linear(1024, 1))
    dormant = list(range(0, 1024, 2))
    force_dormant(mlp, "0", dormant)
    recycle_dormant(mlp, None, torch.randn(64, 400), tau=0.0)
    fresh = nn.Linear(400, 1024).weight
    redrawn = mlp[0].weight[dormant]
    bound = 1 / math.sqrt(400)
    assert redrawn.abs().max() <= bound
    assert redrawn.std().item() == pytest.approx(fresh.std().item(), rel=0.02)
    assert torch.all(mlp[0].bias[dormant] == 0)

    model, x = Wrapped(nature_cnn()), frames()
    force_dormant(model, CONV2, list(range(32)))
    recycle_dormant(model, None, x, tau=0.0)
    conv_fresh = nn.Conv2d(32, 64, 4, stride=2).weight
    assert layer(model, CONV2).weight[:32].std().item() == pytest.approx(conv_fresh.std().item(), rel=0.03)


def test_custom_init_fn_is_used():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(300, 512), nn.ReLU(), nn.Linear(512, 1))
    force_dormant(mlp, "0", list(range(256)))
    recycle_dormant(mlp, None, torch.randn(16, 300), tau=0.0, init_fn=lambda w: nn.init.normal_(w, std=0.5))
    assert mlp[0].weight[:256].std().item() == pytest.approx(0.5, rel=0.02)
    assert mlp[0].weight[256:].abs().max() <= 1 / math.sqrt(300)  # untouched rows


def test_redrawn_rows_are_those_of_one_fresh_draw_of_the_default_init():
    """The exact values: the recycled rows of a tensor drawn by PyTorch's default initializer from the same seed."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 1))
    dormant, kept = list(range(0, 64, 3)), [i for i in range(64) if i % 3]
    force_dormant(mlp, "0", dormant)
    before, x = mlp[0].weight.detach().clone(), torch.randn(16, 40)
    torch.manual_seed(11)
    recycle_dormant(mlp, None, x, tau=0.0)
    torch.manual_seed(11)
    expected = nn.init.kaiming_uniform_(torch.empty(64, 40), a=math.sqrt(5))
    assert torch.equal(mlp[0].weight[dormant], expected[dormant])
    assert torch.equal(mlp[0].weight[kept], before[kept])


@pytest.mark.parametrize("make_optimizer, moments", [
    (lambda p: torch.optim.Adam(p, lr=1e-3), ["exp_avg", "exp_avg_sq"]),
    (lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    (lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9), ["momentum_buffer"]),
])
def test_optimizer_state_zeroed_exactly_at_recycled_entries(make_optimizer, moments):
    model, x = Wrapped(nature_cnn()), frames(16)
    optimizer = make_optimizer(model.parameters())
    train_steps(model, optimizer, x)
    c, j = 3, 77
    force_dormant(model, CONV3, [c])
    force_dormant(model, FC1, [j])
    reference = {name: s <= 0 for name, s in reference_scores(model, x).items()}
    before = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()}
    recycle_dormant(model, optimizer, x, tau=0.0)

    conv3, fc1 = layer(model, CONV3), layer(model, FC1)
    expected = {p: torch.zeros_like(p, dtype=torch.bool) for p in model.parameters()}
    for name in HIDDEN:
        mod = layer(model, name)
        expected[mod.weight][reference[name]] = True
        expected[mod.bias][reference[name]] = True
    for name, successor in zip(HIDDEN, HIDDEN[1:] + [OUT]):
        repeats = 49 if name == CONV3 else 1  # conv3 -> fc1 crosses the flatten
        expected[layer(model, successor).weight][:, reference[name].repeat_interleave(repeats)] = True
    assert expected[conv3.weight][c].all() and expected[fc1.weight][:, c * 49].all()

    for p in model.parameters():
        for key in moments:
            now, then = optimizer.state[p][key], before[p][key]
            assert torch.all(now[expected[p]] == 0), key
            assert torch.equal(now[~expected[p]], then[~expected[p]]), key
        if "step" in before[p]:
            assert torch.equal(optimizer.state[p]["step"], before[p]["step"])


def test_reset_optimizer_step_only_on_edited_parameters():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(mlp.parameters())
    x = torch.randn(64, 8)
    train_steps(mlp, optimizer, x)
    with torch.no_grad():
        mlp[2].bias.fill_(5.0)  # layer "2": nothing dormant
    force_dormant(mlp, "0", [4])
    recycle_dormant(mlp, optimizer, x, tau=0.0, reset_optimizer_step=True)
    steps = {name: int(optimizer.state[p]["step"]) for name, p in mlp.named_parameters()}
    # Layer 0 recycled: its weight, its bias and layer 2's weight (outgoing) are edited.
    assert steps == {"0.weight": 0, "0.bias": 0, "2.weight": 0, "2.bias": 3, "4.weight": 3, "4.bias": 3}


class Critic(nn.Module):
    """SAC-style critic: Q(s, a) from a concatenation at the input."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.q = nn.Linear(11 + 3, 256), nn.Linear(256, 256), nn.Linear(256, 1)

    def forward(self, obs, action):
        h = F.relu(self.fc1(torch.cat([obs, action], dim=1)))
        return self.q(F.relu(self.fc2(h)))


def test_mlp_critic_with_adamw():
    torch.manual_seed(0)
    critic = Critic()
    optimizer = torch.optim.AdamW(critic.parameters(), lr=3e-4)
    batch = (torch.randn(128, 11), torch.rand(128, 3) * 2 - 1)
    train_steps(critic, optimizer, batch)
    force_dormant(critic, "fc1", [0, 1, 2])
    force_dormant(critic, "fc2", [10])
    before_out = critic(*batch).detach()
    result = recycle_dormant(critic, optimizer, batch, tau=0.0)
    assert result["recycled"]["fc1"] >= 3 and result["recycled"]["fc2"] >= 1
    assert list(result["scores"]) == ["fc1", "fc2"]
    torch.testing.assert_close(critic(*batch), before_out, rtol=1e-5, atol=1e-6)
    assert torch.all(optimizer.state[critic.fc2.weight]["exp_avg"][:, :3] == 0)
    assert torch.all(optimizer.state[critic.q.weight]["exp_avg_sq"][:, 10] == 0)
    train_steps(critic, optimizer, batch)  # the optimizer still works


def critic_optimizer_cases():
    """(label, make the optimizer from the critic and an actor, expected message): each once recycled in silence,
    leaving the recycled neurons' moments as they were."""
    return [
        ("the actor's optimizer", lambda critic, actor: torch.optim.Adam(actor.parameters()),
         "cannot recycle: 'fc1.weight' is not among the optimizer's parameters, so its moments could not be reset: "
         "pass the optimizer that updates it (or optimizer=None to recycle without resetting any)"),
        ("a frozen first layer", lambda critic, actor: torch.optim.Adam([*critic.fc2.parameters(),
                                                                         *critic.q.parameters()]),
         "cannot recycle: 'fc1.weight' is not among the optimizer's parameters"),
        ("Adafactor", lambda critic, actor: torch.optim.Adafactor(critic.parameters()),
         "cannot recycle: the optimizer keeps 'row_var' of shape (256, 1) for 'fc1.weight' of shape (256, 14) "
         "(factored or flattened, as Adafactor's or L-BFGS's), which ReDo cannot reset entry by entry: use an "
         "optimizer whose state is shaped like each parameter (Adam, SGD, RMSprop, ...), or pass optimizer=None and "
         "reset it yourself"),
    ]


@pytest.mark.parametrize("label, make_optimizer, message", critic_optimizer_cases(),
                         ids=[case[0] for case in critic_optimizer_cases()])
def test_an_optimizer_whose_state_cannot_be_reset_entry_by_entry_is_refused_unchanged(label, make_optimizer, message):
    torch.manual_seed(0)
    critic, actor = Critic(), nn.Linear(11, 3)
    optimizer = make_optimizer(critic, actor)
    batch = (torch.randn(128, 11), torch.rand(128, 3) * 2 - 1)
    train_steps(critic, optimizer, batch)
    force_dormant(critic, "fc1", [0, 1, 2])
    before = snapshot(critic, optimizer)
    with pytest.raises(ValueError) as error:
        recycle_dormant(critic, optimizer, batch, tau=0.0)
    assert str(error.value).startswith(message)
    assert_bit_identical(before, snapshot(critic, optimizer))
    recycle_dormant(critic, None, batch, tau=0.0)  # without an optimizer, as the message offers


def test_factored_state_of_two_entries_is_refused_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    optimizer = torch.optim.Adafactor(model.parameters())
    x = torch.randn(16, 2)
    train_steps(model, optimizer, x)
    with pytest.raises(ValueError, match=r"keeps 'row_var' of shape \(2, 1\) for '0.weight' of shape \(2, 2\)"):
        recycle_dormant(model, optimizer, x, tau=0.0)


def test_an_optimizer_that_has_not_stepped_yet_has_nothing_to_reset():
    torch.manual_seed(0)
    critic = Critic()
    optimizer = torch.optim.Adam(critic.parameters())  # no state until its first step
    batch = (torch.randn(128, 11), torch.rand(128, 3) * 2 - 1)
    force_dormant(critic, "fc1", [0, 1, 2])
    assert recycle_dormant(critic, optimizer, batch, tau=0.0)["recycled"]["fc1"] >= 3
    assert not optimizer.state
    train_steps(critic, optimizer, batch)


def test_reset_optimizer_step_sets_a_plain_step_count_to_zero():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1)
    for p in mlp.parameters():  # an optimizer that counts steps in a plain int
        optimizer.state[p] = {"step": 7, "buffer": torch.ones_like(p)}
    force_dormant(mlp, "0", [3])
    recycle_dormant(mlp, optimizer, torch.rand(32, 8), tau=0.0, reset_optimizer_step=True)
    steps = [optimizer.state[p]["step"] for p in mlp.parameters()]
    assert steps == [0, 0, 0, 7] and all(type(step) is int for step in steps)  # edited: fc0 weight, bias, fc2 weight


def test_nothing_dormant_changes_nothing():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(mlp.parameters())
    x = torch.rand(64, 8)
    train_steps(mlp, optimizer, x)
    make_all_active(mlp, ["0", "2"])
    assert dormant_fractions(dormant_scores(mlp, x), 0.1)["total"] == 0
    before = snapshot(mlp, optimizer)
    rng_before = torch.get_rng_state()
    result = recycle_dormant(mlp, optimizer, x, tau=0.1)
    assert result["recycled"] == {"0": 0, "2": 0}
    assert_bit_identical(before, snapshot(mlp, optimizer))
    assert torch.equal(torch.get_rng_state(), rng_before)  # no draw either


# ---------------------------------------------------------------- unsupported architectures


class TwiceUsed(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = F.relu(self.inp(x))
        return self.out(F.relu(self.shared(F.relu(self.shared(h)))))


class LayerNormed(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.out = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.inp(x))))


class BatchNormed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.out = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.conv(x))).flatten(1))


class ReflectPadded(nn.Module):
    """A pad other than zeros, its mode and value given by keyword or by position."""

    def __init__(self, mode: str = "reflect", value: float = 0.0, positional: bool = False):
        super().__init__()
        self.mode, self.value, self.positional = mode, value, positional
        self.conv, self.conv2, self.out = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        h = F.relu(self.conv(x))
        if self.positional:
            arguments = (self.mode, self.value) if self.mode == "constant" else (self.mode,)
            h = F.pad(h, (1, 1, 1, 1), *arguments)
        elif self.mode == "constant":
            h = F.pad(h, (1, 1, 1, 1), value=self.value)
        else:
            h = F.pad(h, (1, 1, 1, 1), mode=self.mode)
        return self.out(F.relu(self.conv2(h)).flatten(1))


class PooledAcrossNeurons(nn.Module):
    """A max-pool over the feature axis: each pooled value comes from two neurons."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(F.max_pool1d(F.relu(self.inp(x)).unsqueeze(1), 2).squeeze(1))


class PartlyUnused(nn.Module):
    """Half of a hidden layer's neurons are never used: they have no activation to score."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(F.relu(self.inp(x)[:, :8]))


class StackedOnTheBatch(nn.Module):
    """Two layers' outputs concatenated along the batch, then padded: a channel holds a different neuron in
    each half of the batch."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.conv = nn.Conv2d(2, 4, 3), nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3)
        self.out = nn.Linear(144, 2)

    def forward(self, x):
        h = F.pad(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))]), (1, 1, 1, 1))
        return self.out(F.relu(self.conv(h)).flatten(1))


class StackedLinear(nn.Module):
    """Two layers' outputs concatenated along the batch and read by one head: a column holds two neurons."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))]))


class ReadsOneNeuronRaw(nn.Module):
    """`out` reads every neuron of `a` and `b` after the ReLU but neuron 0 of `raw`, which it reads raw."""

    def __init__(self, raw: str):
        super().__init__()
        self.raw, self.a, self.b, self.out = raw, nn.Linear(8, 16), nn.Linear(8, 4), nn.Linear(20, 2)

    def forward(self, x):
        h = {"a": self.a(x), "b": self.b(x)}
        h = {k: torch.cat([v[:, :1], F.relu(v[:, 1:])], 1) if k == self.raw else F.relu(v) for k, v in h.items()}
        return self.out(torch.cat([h["a"], h["b"]], 1))


class Maxout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(torch.maximum(F.relu(self.a(x)), F.relu(self.b(x))))


class TanhNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x)))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.gate, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(F.relu(self.inp(x)) * torch.sigmoid(self.gate(x)))


class ReturnsFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = F.relu(self.inp(x))
        return self.out(h), h


class GroupedReader(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.grouped, self.out = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Linear(64, 2)

    def forward(self, x):
        return self.out(F.relu(self.grouped(F.relu(self.conv(x)))).flatten(1))


@pytest.mark.parametrize("make_model, x, culprit", [
    (TwiceUsed, torch.randn(32, 8),
     "layer 'shared' runs more than once in a forward pass; dormant neurons are only defined for layers that run once"),
    (LayerNormed, torch.randn(32, 8), "'inp' is followed by layer_norm, which mixes the layer's neurons, so "
                                      "recycling could not keep the outputs unchanged"),
    (StackedLinear, torch.randn(32, 8), "'out' reads '[ab]' with several neurons in one input column"),
    (lambda: ReadsOneNeuronRaw("a"), torch.randn(32, 8), r"'out' reads 'a' without the activation \(pass "
                                                         r"activation=\.\.\. if the network applies another"),
    (lambda: ReadsOneNeuronRaw("b"), torch.randn(32, 8), "'out' reads 'b' without the activation"),
    (Maxout, torch.randn(32, 8), "'a' goes through maximum"),
    (BatchNormed, torch.randn(32, 2, 8, 8), "'conv' is followed by batch_norm"),
    (TanhNet, torch.randn(32, 8), "'inp' goes through tanh"),
    (ReflectPadded, torch.randn(32, 2, 8, 8), "'conv' goes through a padding other than zeros"),
    (lambda: ReflectPadded("constant", 1.0), torch.randn(32, 2, 8, 8), "'conv' goes through a padding other than"),
    (lambda: ReflectPadded("replicate", positional=True), torch.randn(32, 2, 8, 8), "'conv' goes through a padding"),
    (lambda: ReflectPadded("constant", 1.0, positional=True), torch.randn(32, 2, 8, 8), "'conv' goes through a pad"),
    (PooledAcrossNeurons, torch.randn(32, 8), "'inp' is pooled across neurons before 'out' reads it"),
    (StackedOnTheBatch, torch.randn(16, 2, 8, 8), "'conv' reads '[ab]' with several neurons in one input channel"),
    (Gated, torch.randn(32, 8), "'inp' goes through mul"),
    (ReturnsFeatures, torch.randn(32, 8), "'inp' is read by other layers and is also part of the model's output"),
    (GroupedReader, torch.randn(32, 2, 8, 8), r"'grouped', which reads 'conv', is a grouped convolution \(groups=2\)"),
    (PartlyUnused, torch.randn(32, 8),
     r"no activation of 'inp' was found \(pass activation=\.\.\. if the network applies another nonlinearity\)"),
])
def test_unsupported_architecture_raises_before_any_change(make_model, x, culprit):
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    train_steps(model, optimizer, x)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module is not model.out and module.bias is not None:
            with torch.no_grad():
                module.bias[0] = -1e6  # something to recycle everywhere
    before = snapshot(model, optimizer)
    with pytest.raises(ValueError, match=culprit):
        recycle_dormant(model, optimizer, x, tau=0.1)
    assert_bit_identical(before, snapshot(model, optimizer))


def test_normalized_layers_are_scored_on_the_activation_after_the_norm():
    torch.manual_seed(0)
    model, x = LayerNormed(), torch.randn(64, 8)
    with torch.no_grad():
        per_neuron = F.relu(model.norm(model.inp(x))).abs().mean(dim=0)
    scores = dormant_scores(model, x)
    assert list(scores) == ["inp"]
    torch.testing.assert_close(scores["inp"], per_neuron / (per_neuron.mean() + 1e-9))


def test_a_model_without_hidden_layers_is_refused():
    with pytest.raises(ValueError, match=r"^Linear ran 1 Linear/Conv2d layer\(s\), none of them read by another: "
                                         "scoring needs at least one hidden layer before the output layers$"):
        dormant_scores(nn.Linear(8, 2), torch.randn(4, 8))


class FunctionalCalls(nn.Module):
    """Layers applied through F.conv2d/F.linear, by keyword and without a bias argument."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.out = nn.Conv2d(2, 4, 3), nn.Linear(4 * 6 * 6, 16, bias=False), nn.Linear(16, 2)

    def forward(self, x):
        h = F.relu(F.conv2d(input=x, weight=self.conv.weight, bias=self.conv.bias))
        h = F.relu(F.linear(h.flatten(1), self.fc.weight))
        return F.linear(input=h, weight=self.out.weight, bias=self.out.bias)


def test_layers_called_through_the_functional_api():
    torch.manual_seed(0)
    model, x = FunctionalCalls(), torch.randn(64, 2, 8, 8)
    with torch.no_grad():
        conv = F.relu(model.conv(x))
        fc = F.relu(model.fc(conv.flatten(1)))
    scores = dormant_scores(model, x)
    expected = {"conv": conv.mean(dim=(0, 2, 3)), "fc": fc.mean(dim=0)}
    for name, mean in expected.items():
        torch.testing.assert_close(scores[name], mean / (mean.mean() + 1e-9))
    with torch.no_grad():
        model.conv.weight[1], model.conv.bias[1], model.fc.weight[3] = 0, -1, 0
        before = model(x)
    result = recycle_dormant(model, None, x, tau=0.0)
    assert result["recycled"] == {"conv": 1, "fc": 1}
    torch.testing.assert_close(model(x), before)
    assert not model.fc.weight[:, 36:72].any() and not model.out.weight[:, 3].any()


def test_negative_tau_rejected():
    model = Wrapped(nature_cnn())
    with pytest.raises(ValueError, match="tau"):
        recycle_dormant(model, None, frames(2), tau=-0.1)


def test_redraw_does_not_depend_on_memory_format():
    x = frames(16)
    nets = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model = Wrapped(nature_cnn()).to(memory_format=memory_format)
        force_dormant(model, CONV2, [0, 9])
        torch.manual_seed(5)
        recycle_dormant(model, None, x, tau=0.0)
        nets.append(model)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- srank and the overlap of dormant sets


def matrix_with_singular_values(values: list[float], rows: int, seed: int = 0) -> torch.Tensor:
    """A (rows, len(values)) matrix U diag(values) V^T with random orthogonal U, V."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=g, dtype=torch.double))
    v, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=torch.double))
    return u @ torch.diag(torch.tensor(values, dtype=torch.double)) @ v.T


@pytest.mark.parametrize("values, delta, expected", [
    ([1.0] * 8, 0.01, 8),  # 7/8 of the sum < 0.99: all eight needed
    ([100.0, 1.0, 0.0, 0.0], 0.01, 1),  # 100/101 = 0.990099 >= 0.99
    ([97.0, 2.5, 0.5], 0.01, 2),  # 0.97 < 0.99 <= 0.995
    ([50.0, 30.0, 15.0, 4.5, 0.5], 0.01, 4),  # 0.5, 0.8, 0.95, 0.995
    ([50.0, 30.0, 15.0, 4.5, 0.5], 0.1, 3),  # 0.95 >= 0.9
    ([9.0, 1.0], 0.0, 2),  # delta 0: every non-zero singular value
])
def test_srank_of_known_singular_values(values, delta, expected):
    assert srank(torch.diag(torch.tensor(values)), delta) == expected
    # Rotations change no singular value: the same rank for U diag V^T, float32 included.
    assert srank(matrix_with_singular_values(values, rows=20).float(), delta) == expected


def test_srank_sums_singular_values_not_their_squares():
    # Squared singular values would stop at 5 ((100 + 4 * 0.25) / 102 = 0.9902); unsquared, 13.5 / 14 < 0.99 needs 9.
    values = [10.0] + [0.5] * 8
    assert srank(torch.diag(torch.tensor(values))) == 9
    # And with no centring: a constant feature matrix (all rows equal) has rank 1, not 0.
    assert srank(torch.ones(64, 16)) == 1


def test_srank_edge_cases():
    assert srank(torch.zeros(10, 4)) == 0
    assert srank(torch.randn(3, 512)) <= 3  # never above min(N, d)
    with pytest.raises(ValueError, match=r"^features must be a \(states, features\) matrix, got shape \(5,\)$"):
        srank(torch.ones(5))


@pytest.mark.parametrize("current, earlier, expected", [
    ([1, 1, 0, 0], [0, 0, 1, 1], 0.0),  # disjoint
    ([1, 0, 0, 0], [1, 1, 1, 0], 1.0),  # nested: every neuron dormant now was dormant before
    ([1, 1, 1, 0], [1, 0, 0, 0], 1.0),  # nested the other way: the smaller set is inside
    ([1, 1, 1, 0], [0, 1, 1, 1], 2 / 3),
    ([1, 1, 0, 0, 0], [0, 1, 1, 1, 1], 1 / 2),
    ([0, 0, 0], [1, 1, 0], 0.0),  # nothing dormant now
    ([1, 0, 0], [0, 0, 0], 0.0),  # nothing dormant before (the first check)
    ([0, 0, 0], [0, 0, 0], 0.0),
])
def test_dormant_overlap_of_hand_computed_sets(current, earlier, expected):
    as_mask = lambda bits: torch.tensor(bits, dtype=torch.bool)
    assert dormant_overlap(as_mask(current), as_mask(earlier)) == pytest.approx(expected, abs=1e-12)


def test_dormant_overlap_refuses_masks_of_different_shapes():
    with pytest.raises(ValueError, match=r"^masks of different shapes: \(3,\) and \(4,\)$"):
        dormant_overlap(torch.zeros(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
