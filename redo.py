"""Score and recycle dormant neurons (ReDo).

Implements the method of "The Dormant Neuron Phenomenon in Deep Reinforcement Learning"
(Sokar, Agarwal, Castro, Evci, ICML 2023). Torch only; copy this file into your project.

A hidden neuron's score is its mean absolute activation on a batch of inputs, divided by the mean
of that quantity over its layer (plus 1e-9), so scores average 1 within a layer. A neuron is
tau-dormant when ``score <= tau``. A convolutional neuron is an output channel: its activation is
averaged over the batch and all spatial positions. The last ``nn.Linear``/``nn.Conv2d`` to run is
the output layer: it is never scored nor recycled.

Recycling a dormant neuron re-draws its incoming weights from the layer's initializer, sets its
bias to 0 and zeroes its outgoing weights in the next layer, so that with ``tau=0`` the network's
outputs do not change. The optimizer's per-parameter state (e.g. Adam's moments) is zeroed at
exactly those entries; Adam's ``step`` is kept, so no other neuron's update size changes.

Example::

    from redo import dormant_fractions, dormant_scores, recycle_dormant

    states = replay.sample_states(256)              # a batch of inputs
    scores = dormant_scores(q_network, states)      # {"net.0": tensor([...]), ...}
    fractions = dormant_fractions(scores, tau=0.1)  # {"net.0": 0.03, ..., "total": 0.05}

    # after the gradient step, every F steps:
    result = recycle_dormant(q_network, optimizer, states, tau=0.1)
    result["recycled"]                              # {"net.0": 2, "net.2": 0, ...}

Supported architectures: a plain chain of ``nn.Linear`` and ``nn.Conv2d`` (groups=1) layers,
each hidden one followed directly by ``activation`` (ReLU by default) and feeding only the next
one, possibly through a flatten in PyTorch's NCHW order (``x.flatten(1)``, ``nn.Flatten``). That
covers the Nature DQN CNN and MLP actors/critics with a single head. :func:`recycle_dormant`
checks this on the actual forward pass and raises ``ValueError`` naming the layer, before anything
is modified, for what it cannot handle: residual connections, concatenations, pooling or
normalization between layers, several heads, a layer that runs twice, another flatten order.
:func:`dormant_scores` only needs each layer to run once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["dormant_scores", "dormant_fractions", "recycle_dormant"]

_EPS = 1e-9


@dataclass
class _LayerRecord:
    name: str
    module: nn.Module
    score: Tensor
    feeds_next_directly: bool = True  # set False when the next layer's input is not act(output)


def _trace(model: nn.Module, x: Tensor | tuple[Tensor, ...], activation: Callable[[Tensor], Tensor], check_chain: bool) -> list[_LayerRecord]:
    """Runs one forward pass and returns a record per Linear/Conv2d layer, in execution order."""
    records: list[_LayerRecord] = []
    seen: set[str] = set()
    previous_activation: list[Tensor | None] = [None]

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if name in seen:
                raise ValueError(f"layer '{name}' runs more than once in a forward pass; dormant neurons are "
                                 "only defined for layers that run once")
            seen.add(name)
            if check_chain and records:
                layer_input = args[0] if args else None
                expected = previous_activation[0]
                records[-1].feeds_next_directly = (
                    isinstance(layer_input, Tensor)
                    and layer_input.shape[0] == expected.shape[0]
                    and layer_input.numel() == expected.numel()
                    and torch.equal(layer_input.reshape(layer_input.shape[0], -1), expected.reshape(expected.shape[0], -1))
                )
            activated = activation(output)
            # A conv neuron is a channel (dim 1); a linear neuron is the last dim.
            reduce_dims = [d for d in range(activated.dim()) if d != (1 if isinstance(module, nn.Conv2d) else activated.dim() - 1)]
            mean_abs = activated.abs().float().mean(dim=reduce_dims)
            records.append(_LayerRecord(name, module, mean_abs / (mean_abs.mean() + _EPS)))
            previous_activation[0] = activated if check_chain else None

        return hook

    handles = [
        module.register_forward_hook(make_hook(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    ]
    try:
        with torch.no_grad():
            model(*x) if isinstance(x, tuple) else model(x)
    finally:
        for handle in handles:
            handle.remove()
    if len(records) < 2:
        raise ValueError(f"{type(model).__name__} ran {len(records)} Linear/Conv2d layer(s); scoring needs at least "
                         "one hidden layer before the output layer")
    return records


def dormant_scores(model: nn.Module, x: Tensor | tuple[Tensor, ...], activation: Callable[[Tensor], Tensor] = F.relu) -> dict[str, Tensor]:
    """Scores every hidden neuron of ``model`` on the batch ``x``.

    Runs ``model(x)`` once, without recording gradients, with forward hooks on every ``nn.Linear``
    and ``nn.Conv2d``. For each such layer that runs, except the last one (the output layer), the
    score of neuron i is ``E|activation(h)_i| / (mean_k E|activation(h)_k| + 1e-9)``, the mean taken
    over the batch (and, for a convolution, over all spatial positions of channel i). The model's
    train/eval mode is left as it is: call ``model.eval()`` first if it has dropout or batch norm.

    Args:
        model: the network. Each scored layer must run exactly once per forward pass.
        x: a batch of inputs, e.g. states sampled uniformly from a replay buffer, or a tuple of
            batches passed as ``model(*x)`` (e.g. a critic's states and actions).
        activation: the nonlinearity that follows each hidden layer.

    Returns:
        ``{module name: float32 tensor of shape (out_features or out_channels,)}``, in execution
        order, names as in ``model.named_modules()``.

    Raises:
        ValueError: a layer runs more than once, or there is no hidden layer.
    """
    return {record.name: record.score for record in _trace(model, x, activation, check_chain=False)[:-1]}


def dormant_fractions(scores: dict[str, Tensor], tau: float) -> dict[str, float]:
    """Fraction of tau-dormant neurons (``score <= tau``) per layer, and ``"total"`` over all of them.

    ``"total"`` pools the neurons of every layer, so wide layers weigh more (for the Nature CNN,
    672 neurons: 32 + 64 + 64 + 512).
    """
    dormant = {name: int((score <= tau).sum()) for name, score in scores.items()}
    fractions = {name: dormant[name] / score.numel() for name, score in scores.items()}
    fractions["total"] = sum(dormant.values()) / max(1, sum(score.numel() for score in scores.values()))
    return fractions


def _default_init(weight: Tensor) -> None:
    # What nn.Linear.reset_parameters and nn.Conv2d.reset_parameters draw.
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def _zero_optimizer_entries(optimizer: torch.optim.Optimizer | None, param: Tensor, index: tuple, reset_step: bool) -> None:
    if optimizer is None or param not in optimizer.state:
        return
    state = optimizer.state[param]
    for key, value in state.items():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value[index] = 0
    if reset_step and "step" in state:
        if isinstance(state["step"], Tensor):
            state["step"].zero_()
        else:
            state["step"] = 0


@torch.no_grad()
def recycle_dormant(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    x: Tensor | tuple[Tensor, ...],
    tau: float,
    activation: Callable[[Tensor], Tensor] = F.relu,
    init_fn: Callable[[Tensor], object] | None = None,
    reset_optimizer_step: bool = False,
) -> dict[str, dict]:
    """Recycles the tau-dormant neurons of ``model``, scored on ``x``, in place.

    For every hidden neuron with ``score <= tau`` (see :func:`dormant_scores`): its incoming
    weights are re-drawn with ``init_fn`` and its bias is set to 0; then its outgoing weights in the
    next layer are set to 0 (a column of a Linear, an input channel of a Conv2d, or, after a flatten,
    the channel's block of H*W columns). All re-draws happen before any zeroing, so a weight between
    two recycled neurons ends at 0. Parameters stay the same tensor objects.

    In ``optimizer.state[param]`` of every edited parameter, each tensor with the parameter's shape
    (Adam's ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, SGD's ``momentum_buffer``, RMSprop's
    ``square_avg``, ...) is zeroed at exactly the edited entries; the rest of the state is left
    untouched. Layers with no dormant neuron, and their optimizer state, are not touched at all.

    Args:
        model: a supported network (see the module docstring); checked on this forward pass.
        optimizer: the model's optimizer, or None. State is looked up by parameter object.
        x: the batch to score on, e.g. states sampled uniformly from the replay buffer, or a
            tuple of batches passed as ``model(*x)``.
        tau: dormancy threshold, >= 0. With 0 the outputs on ``x`` are unchanged.
        activation: the nonlinearity that follows each hidden layer.
        init_fn: an in-place initializer called on a new tensor shaped like a layer's weight, e.g.
            ``nn.init.xavier_uniform_``; the rows of the recycled neurons are copied from it. It
            must be the initializer the network was built with. Default: PyTorch's own default for
            Linear and Conv2d, ``kaiming_uniform_(w, a=sqrt(5))``.
        reset_optimizer_step: also set the ``step`` count of every edited parameter to 0. This
            restarts Adam's bias correction for the **whole** tensor, which rescales the updates of
            every neuron of the layer, not only the recycled ones. Off by default, as in the
            authors' code.

    Returns:
        ``{"recycled": {layer name: number of neurons recycled}, "scores": {layer name: scores}}``.

    Raises:
        ValueError: ``tau < 0``, or the architecture is not supported (names the layer). Raised
            before anything is modified.
    """
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    init_fn = init_fn or _default_init
    records = _trace(model, x, activation, check_chain=True)
    for record, successor in zip(records[:-1], records[1:]):
        _check_supported(record, successor)

    masks = [record.score <= tau for record in records[:-1]]
    # Re-draw every incoming weight first, then zero every outgoing weight (see docstring).
    for record, mask in zip(records, masks):
        if not mask.any():
            continue
        layer = record.module
        # Contiguous, so the same seed gives the same weights whatever the layer's memory format.
        fresh = torch.empty(layer.weight.shape, dtype=layer.weight.dtype, device=layer.weight.device)
        init_fn(fresh)
        layer.weight[mask] = fresh[mask]
        _zero_optimizer_entries(optimizer, layer.weight, (mask,), reset_optimizer_step)
        if layer.bias is not None:
            layer.bias[mask] = 0
            _zero_optimizer_entries(optimizer, layer.bias, (mask,), reset_optimizer_step)
    for record, successor, mask in zip(records, records[1:], masks):
        if not mask.any():
            continue
        weight = successor.module.weight
        repeats = weight.shape[1] // mask.numel()  # H*W after a flatten from a conv, else 1
        columns = mask.repeat_interleave(repeats)
        index = (slice(None), columns)
        weight[index] = 0
        _zero_optimizer_entries(optimizer, weight, index, reset_optimizer_step)

    return {
        "recycled": {record.name: int(mask.sum()) for record, mask in zip(records, masks)},
        "scores": {record.name: record.score for record in records[:-1]},
    }


def _check_supported(record: _LayerRecord, successor: _LayerRecord) -> None:
    layer, after = record.module, successor.module
    for module, name in ((layer, record.name), (after, successor.name)):
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"layer '{name}' is a grouped convolution (groups={module.groups}); recycle_dormant "
                             "supports groups=1 only")
    if isinstance(layer, nn.Linear) and isinstance(after, nn.Conv2d):
        raise ValueError(f"layer '{record.name}' (Linear) feeds a Conv2d '{successor.name}'; recycle_dormant "
                         "supports Conv2d->Conv2d, Conv2d->Linear and Linear->Linear only")
    if not record.feeds_next_directly:
        raise ValueError(f"layer '{record.name}': the next layer '{successor.name}' does not take exactly "
                         f"activation({record.name}) as input (residual connection, concatenation, pooling, "
                         "normalization, several heads, another activation, or a flatten order other than NCHW?); recycle_dormant "
                         "supports plain chains only")
