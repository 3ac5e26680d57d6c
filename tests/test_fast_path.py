"""The fast update step (compiled loss, channels_last, fused Adam) against the plain eager one, with ReDo editing in
between."""

import copy

import pytest
import torch

import dqn_redo
from dqn_redo import Batch, QNetwork, drq_augment, load_optimizer_state, make_train_step
from redo import recycle_dormant


def batches(n: int, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    frames = lambda: torch.randint(0, 256, (32, 4, 84, 84), generator=g, dtype=torch.uint8)
    data = []
    for _ in range(n):
        terminated = (torch.rand(32, generator=g) < 0.1).float()
        data.append(Batch(frames(), torch.randint(0, 6, (32,), generator=g), torch.rand(32, generator=g).round(),
                          frames(), terminated, 0.99 * (1 - terminated)))
    return data


def train(compile: bool, channels_last: bool, fused_adam: bool, data: list[Batch], recycle_every: int = 3,
          network: str = "dopamine", drq: bool = False):
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    q_network = QNetwork(6, network, dueling=drq).to(memory_format=memory_format)
    with torch.no_grad():  # no neuron dormant by chance: only the forced ones below are recycled
        for layer in (q_network.conv1, q_network.conv2, q_network.conv3, q_network.fc1):
            layer.bias.fill_(0.05)
        if drq:  # actions 0.1 apart: double DQN's argmax has no near-tie that rounding could flip
            q_network.advantage.bias.copy_(0.1 * torch.arange(6))
    target_network = copy.deepcopy(q_network)
    initial = [p.detach().clone() for p in q_network.parameters()]  # to measure how far training moves each tensor
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4, eps=1.5e-4, fused=fused_adam)
    step = make_train_step(q_network, target_network, optimizer, compile, double_dqn=drq,
                           augment=drq_augment if drq else None)
    losses, recycled, jumps = [], [], []
    torch.manual_seed(1)  # the same re-draws in every mode
    for i, batch in enumerate(data):
        before = q_network.fc1.weight.detach().clone()
        losses.append(step(batch)[0].item())
        jumps.append((q_network.fc1.weight - before).abs().max().item())
        if i % recycle_every == recycle_every - 1:
            # Force a known set dormant, so both modes recycle the same neurons whatever their
            # float rounding (a score near tau could otherwise fall either side).
            with torch.no_grad():
                for layer, width in [(q_network.conv1, 32), (q_network.conv3, 64), (q_network.fc1, 512)]:
                    layer.bias[torch.arange(i % 5, width, 7)] = -1e4
            result = recycle_dormant(q_network, optimizer, batch.obs, tau=0.0)
            recycled.append(result["recycled"])
    return losses, recycled, jumps, q_network, initial


@pytest.mark.parametrize("network, drq", [("dopamine", False), ("nature", False), ("dopamine", True)],
                         ids=["dopamine", "nature", "drq-eps"])
def test_fast_path_matches_eager_with_recycling(network, drq, capsys):
    data = batches(12)
    eager_losses, eager_recycled, _, eager_net, initial = train(False, False, False, data, network=network, drq=drq)
    fast_losses, fast_recycled, jumps, fast_net, _ = train(True, True, True, data, network=network, drq=drq)
    assert "torch.compile failed" not in capsys.readouterr().err  # the fast path compiled: not eager vs eager
    assert sum(sum(r.values()) for r in eager_recycled) > 0
    assert fast_recycled == eager_recycled
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(eager_losses), rtol=1e-3, atol=1e-5)
    # The same trajectory up to float rounding, measured against how far training moved each tensor. Not element
    # by element: channels_last kernels sum in another order, and where a gradient element is a near-cancelling sum
    # Adam turns that into a visible difference (on a 2 GHz AVX2 EPYC, 2 of conv2's 32,768 Nature weights ended
    # 2.2e-5 apart, 0.22 of one update; whole tensors at most 1.3e-4 of their movement). A stale weight, a wrong
    # flatten order or another Adam moves whole rows by an update or more: far above 1e-3.
    assert_moved_alike(fast_net, eager_net, initial, 1e-3)
    # Every update, right after a recycling too, starts from the weights as edited: one Adam step at
    # lr 1e-4 moves a weight by about 1e-4, while re-drawn rows differ from the old ones by ~1e-2.
    assert max(jumps) < 5e-4


def test_compile_failure_falls_back_to_eager(monkeypatch, capsys):
    def broken_compile(fn, **kwargs):
        def raise_on_call(*args):
            raise RuntimeError("no C++ compiler found\nmore details")
        return raise_on_call

    monkeypatch.setattr(dqn_redo.torch, "compile", broken_compile)
    data = batches(3)
    eager_losses, *_ = train(False, False, False, data, recycle_every=100)
    fallback_losses, *_ = train(True, False, False, data, recycle_every=100)
    assert fallback_losses == eager_losses
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile failed (RuntimeError: no C++ compiler found); training eagerly") == 1


def train_then_resume(data: list[Batch], fused_before: bool, fused_after: bool,
                      format_before=torch.contiguous_format, format_after=torch.contiguous_format) -> QNetwork:
    """Three updates, then the weights and Adam state move to a new network and optimizer (as on a resume
    with other --fused-adam / --channels-last), then the remaining updates."""
    torch.manual_seed(0)
    q_network = QNetwork(6).to(memory_format=format_before)
    target_network = copy.deepcopy(q_network)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4, eps=1.5e-4, fused=fused_before)
    step = make_train_step(q_network, target_network, optimizer, False)
    for batch in data[:3]:
        step(batch)
    weights, state = copy.deepcopy(q_network.state_dict()), copy.deepcopy(optimizer.state_dict())
    q_network = QNetwork(6).to(memory_format=format_after)
    q_network.load_state_dict(weights)
    target_network.to(memory_format=format_after)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4, eps=1.5e-4, fused=fused_after)
    load_optimizer_state(optimizer, state)
    assert optimizer.param_groups[0]["fused"] == fused_after  # plain load_state_dict keeps the saved choice
    step = make_train_step(q_network, target_network, optimizer, False)
    for batch in data[3:]:
        step(batch)
    return q_network


def assert_moved_alike(got: QNetwork, expected: QNetwork, initial: list[torch.Tensor], fraction: float) -> None:
    """Each of ``got``'s tensors within ``fraction`` of how far training moved ``expected``'s from ``initial``."""
    for (name, a), b, start in zip(expected.named_parameters(), got.parameters(), initial):
        assert (b - a).norm() <= fraction * (a - start).norm(), name


def assert_same_weights(got: QNetwork, reference: tuple[QNetwork, list[torch.Tensor]]) -> None:
    # Each tensor within 1 % of how far the six updates moved it, as the fast path is checked above. Not element by
    # element: the fused and foreach Adams and the two memory formats round differently, and a ReLU input near 0 can
    # flip on that (on a 2-core AVX-512 EPYC, one thread, seed 3: one conv2 channel, its bias 0.29 % of its movement
    # off, a weight 1.1e-5 off where one Adam step is 1e-4). The bugs this guards against move whole tensors
    # (measured on these batches): Adam's step count off by one 1.5-2.9 % in every tensor, moments in the wrong
    # memory order 43 % in conv3's weight, moments lost on resume 29 % or more in every tensor.
    assert_moved_alike(got, *reference, 1e-2)


def train_uninterrupted(data: list[Batch]) -> tuple[QNetwork, list[torch.Tensor]]:
    """The reference: the same updates in one network and one (foreach) Adam, nothing saved or loaded. Returns it
    and its initial weights (the same as ``train_then_resume``'s: the same seed)."""
    torch.manual_seed(0)
    q_network = QNetwork(6)
    initial = [p.detach().clone() for p in q_network.parameters()]
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4, eps=1.5e-4, fused=False)
    step = make_train_step(q_network, copy.deepcopy(q_network), optimizer, False)
    for batch in data:
        step(batch)
    return q_network, initial


def test_adam_state_moves_between_fused_and_foreach():
    """--fused-adam may change on resume: each implementation continues from the other's state."""
    data = batches(6, seed=2)
    reference = train_uninterrupted(data)
    for fused_before, fused_after in [(False, False), (True, False), (False, True), (True, True)]:
        assert_same_weights(train_then_resume(data, fused_before, fused_after), reference)


def test_resume_may_switch_channels_last_under_fused_adam():
    """--channels-last may change on resume. The fused Adam reads moments in memory order, so loaded moments
    must take their parameter's layout; otherwise conv weights get other elements' moments, silently."""
    data = batches(6, seed=3)
    channels_last, nchw = torch.channels_last, torch.contiguous_format
    reference = train_uninterrupted(data)
    for before, after in [(channels_last, nchw), (nchw, channels_last)]:
        assert_same_weights(train_then_resume(data, True, False, before, after), reference)  # foreach: logical
        assert_same_weights(train_then_resume(data, True, True, before, after), reference)


def test_thread_count_changes_only_rounding():
    """The README's claim for the multi-game sweep (runs on 1 and on 2 threads): one update of the dueling network on
    the same batch differs between thread counts only in the last bits of a few gradients (3.4e-6 of the largest
    entry, measured on a 2-core AVX-512 EPYC), far below one Adam step's change."""
    threads = torch.get_num_threads()
    obs = batches(1)[0].obs.contiguous(memory_format=torch.channels_last)
    gradients = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            torch.manual_seed(0)
            q_network = QNetwork(6, dueling=True).to(memory_format=torch.channels_last)
            q_network(obs)[:, 0].sum().backward()
            gradients.append([p.grad.clone() for p in q_network.parameters()])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*gradients):
        assert (one - two).abs().max() <= 1e-4 * one.abs().max()
