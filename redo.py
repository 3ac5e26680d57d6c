"""Score and recycle dormant neurons (ReDo).

Implements "The Dormant Neuron Phenomenon in Deep Reinforcement Learning" (Sokar, Agarwal, Castro,
Evci, ICML 2023). Torch only; copy this file into your project.

A hidden neuron's score is its mean absolute activation (after the nonlinearity) on a batch, divided
by the mean of that over its layer (plus 1e-9); it is tau-dormant when ``score <= tau``. A conv
neuron is an output channel, averaged over the batch and all positions. Recycling re-draws a dormant
neuron's incoming weights from the layer's initializer, sets its bias to 0 and zeroes its outgoing
weights in every layer that reads it, so that with ``tau=0`` the outputs do not change; the
optimizer's moments are zeroed at exactly those entries, and Adam's ``step`` is kept.

Example::

    from redo import dormant_fractions, dormant_overlap, dormant_scores, recycle_dormant, srank

    scores = dormant_scores(q_network, states)      # {"conv1": tensor([...]), ...}
    fractions = dormant_fractions(scores, tau=0.1)  # {"conv1": 0.03, ..., "total": 0.05}
    # after the gradient step, every F steps:
    result = recycle_dormant(q_network, optimizer, states, tau=0.1)
    result["recycled"]                              # {"conv1": 2, "conv2": 0, ...}

    # beside them, the paper's other two signals:
    dormant_now = scores["fc1"] <= 0.1
    dormant_overlap(dormant_now, dormant_before)    # share of today's dormant set dormant before
    dormant_before |= dormant_now
    srank(penultimate_features)                     # effective rank of (N >= 512, 512) features

The graph is read from one real forward pass under a ``TorchFunctionMode`` that follows every element
of every ``nn.Linear``/``nn.Conv2d`` output to the layers that read it: through reshapes, flattens in
any order, slicing, indexing and writes in place, concatenation, zero padding, pooling, reductions over
positions (``x.mean((2, 3))``), dropout and scaling, each reader's columns (or input channels) that hold a
neuron are found exactly. Layers read by no other are output layers (any number): never scored or recycled.
Residual-stream writers are named in ``result["not_recyclable"]`` and left alone; whatever else cannot be recycled
exactly (normalization, a grouped convolution reading a hidden layer, a layer run twice, a neuron-mixing
operation) raises ``ValueError`` naming the layer, before anything changes. So does a hidden layer of
another kind (any operation on a parameter that makes neurons: ``nn.Conv1d``, ``nn.LSTM``, ``x @ W``, an
``nn.Linear`` whose weight an ``einsum`` takes, a broadcast product ``h[:, None] * W``, ...), in scoring
too, unless it is named in ``skip``, and so does an ``nn.Linear``/``nn.Conv2d`` that does not run in the
pass (in recycling even if skipped: it may read a recycled neuron): no layer is ever left out silently. A hidden
activation handed to Python (``h.numpy()``, ``h.tolist()``, ``float(h[0, 0])``) may come back as a tensor ReDo cannot
link to it: the layer is scored, and recycling refuses it; so it does when a hidden layer's values, before or after
its activation, reach the outputs beside its readers (``head(h) + z[:, :3]``, ``z.sum()``, ``z.numpy()``), since
recycling changes them. Before its activation an unread layer's value cannot be told from an output layer's
(``q.numpy()`` for a log) unless the model returns it: a layer read by no other whose output leaves torch before any
activation and is not returned raises ``ValueError`` too (it may come back as a new tensor), unless in ``skip``.
See the README for the supported architectures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["dormant_scores", "dormant_fractions", "dormant_overlap", "srank", "recycle_dormant"]

_EPS = 1e-9
# Values an activation is tried on besides the batch's: both signs, tiny to large, past ReLU6's and hardtanh's bounds.
_PROBE = torch.tensor([-1e4, -6.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 1.5, 6.5, 100.0, 1e4])
_NONE = -1  # element ids: -1 holds no hidden neuron's value; otherwise 2 * neuron + (1 once activated)

# Operations by name. Moves change where elements are, not their values: applied to the element ids as to the data.
_MOVES = set("""reshape view flatten unflatten permute transpose t squeeze unsqueeze expand expand_as repeat movedim
    narrow select __getitem__ cat concat concatenate stack split chunk unbind contiguous clone detach float double
    half bfloat16 to cpu cuda type type_as pad __setitem__""".split())
_SCALINGS = set("dropout dropout1d dropout2d dropout3d feature_dropout mul __mul__ __rmul__ div __truediv__".split())
_POOLS = set("""max_pool1d max_pool2d avg_pool1d avg_pool2d adaptive_max_pool1d adaptive_max_pool2d adaptive_avg_pool1d
    adaptive_avg_pool2d max_pool1d_with_indices max_pool2d_with_indices adaptive_max_pool1d_with_indices
    adaptive_max_pool2d_with_indices lp_pool1d lp_pool2d""".split())
_NORMS = set("layer_norm batch_norm group_norm instance_norm rms_norm local_response_norm".split())
_SUMS = set("add __add__ __radd__ __iadd__ add_ sub __sub__ __rsub__ __isub__ sub_".split())
# Same shape, same neurons: the result is followed as the same layer's values.
_KEEP_IDS = set("float double half bfloat16 to cpu cuda type type_as contiguous clone detach".split())
# Operations that hand a tensor's values to Python, from where they may come back as a new tensor ReDo cannot follow.
_EXPORTS = set("numpy tolist item __array__ __float__ __int__ __index__ __complex__ __bool__".split())
# Reductions over some dimensions (a global average pool written x.mean((2, 3))); each maps a dormant neuron's zeros
# to zero, as a pool does (logsumexp would not). Over a parameter: a layer.
_REDUCTIONS = set("mean sum nansum nanmean amax amin max min".split())
_KNOWN = _MOVES | _SCALINGS | _POOLS | _NORMS | _SUMS | _REDUCTIONS  # anything else may be the activation
# Operations that may take a parameter without making neurons of their own (a learned gain, an input norm, an
# embedding lookup, a log-std's exp); any other operation on a parameter is a layer ReDo does not handle.
_NEURON_FREE = _MOVES | _SCALINGS | _SUMS | _NORMS | set("""embedding exp log softplus sigmoid tanh relu clamp clip
    abs neg __neg__ sqrt rsqrt reciprocal square pow __pow__ prelu embedding_bag __get__""".split())


@dataclass
class _Layer:
    name: str
    module: nn.Module
    first_id: int  # neuron i of this layer has id first_id + i
    size: int  # neurons: out_features or out_channels
    conv: bool  # a channel is a neuron (else a feature of the last dimension)
    ran: bool = False
    abs_sum: Tensor | None = None  # sum of |activation| per neuron, where the activation is seen
    count: Tensor | None = None  # elements summed per neuron
    readers: dict[str, Tensor] = field(default_factory=dict)  # reader name -> element id per input column/channel
    problem: str | None = None  # why it cannot be recycled
    residual: bool = False
    foreign: bool = False  # F.linear/F.conv2d on a weight that is no nn.Linear/nn.Conv2d's (e.g. a NoisyLinear)
    unhandled: bool = False  # a layer of another kind (nn.Conv1d, nn.LSTM, x @ W, ...): neither scored nor recycled
    unknown_readers: set[str] = field(default_factory=set)  # ops other than a layer that took its activation
    raw_exports: set[str] = field(default_factory=set)  # ops that handed its values before the activation to Python

    def fail(self, reason: str) -> None:
        self.problem = self.problem or reason


class _Tracer(TorchFunctionMode):
    """Follows every element derived from a Linear/Conv2d output through one forward pass."""

    def __init__(self, model: nn.Module, activation: Callable[[Tensor], Tensor]):
        super().__init__()
        self.activation = activation
        self.layers: dict[int, _Layer] = {}  # by id(weight)
        self.named: dict[str, _Layer] = {}  # by name, the newest entry: the one opaque tensors' reasons mean
        self.next_id = 0
        for name, module in model.named_modules():
            # A parametrized layer's weight is computed at each call: it is named when it runs (foreign_layer).
            if isinstance(module, (nn.Linear, nn.Conv2d)) and not hasattr(module, "parametrizations"):
                self.layers[id(module.weight)] = self.new_layer(name, module, module.weight.shape[0],
                                                                isinstance(module, nn.Conv2d), module.weight.device)
        self.by_first_id = list(self.layers.values())
        self.foreign: dict[str, _Layer] = {}  # by module name
        self.unhandled: set[str] = set()  # names of the layers of other kinds seen (module or parameter names)
        self.taken: set[str] = set()  # names of the parameters those layers took (or took tensors computed from)
        # id(tensor) -> (tensor, name of the parameter it is or is computed from), for every parameter of the model
        self.parameters = {id(param): (param, name) for name, param in model.named_parameters()}
        self.modules = dict(model.named_modules())
        self.running: list[tuple[str, nn.Module]] = []  # modules with parameters of their own, innermost last
        self.ids: dict[int, tuple[Tensor, Tensor]] = {}  # id(tensor) -> (tensor, element ids); holds the tensor
        self.opaque: dict[int, tuple[Tensor, dict[str, str]]] = {}  # id(tensor) -> (tensor, {layer: reason})
        self.order: list[_Layer] = []
        self.returned: set[str] = set()  # names of the layers whose values reach what the model returns (finish)

    def new_layer(self, name: str, module: nn.Module, size: int, conv: bool, device: torch.device) -> _Layer:
        layer = _Layer(name, module, self.next_id, size, conv, abs_sum=torch.zeros(size, dtype=torch.double,
                       device=device), count=torch.zeros(size, dtype=torch.long, device=device))
        self.next_id += size
        self.named[name] = layer
        return layer

    def foreign_layer(self, func, weight: Tensor) -> _Layer | None:
        """The layer of an F.linear/F.conv2d whose weight belongs to no nn.Linear/nn.Conv2d: named after the module
        running it (e.g. a NoisyLinear computing mu + sigma * epsilon), scored, never recycled. None if that module
        is an nn.Linear/nn.Conv2d and the weight has another number of rows: an operation ReDo cannot handle."""
        if self.running and self.running[-1][0]:
            name, module = self.running[-1]
        elif id(weight) in self.parameters:  # in the model's own forward (named ""): after the weight's owner
            name, module = self.owner_of(self.parameters[id(weight)][1])
        else:
            name, module = f"<{func.__name__} call {len(self.foreign) + 1}>", None
        if name not in self.foreign:
            layer = self.named.get(name)  # e.g. an nn.Linear subclass that computes its weight (a mask, a noise)
            if layer is not None and layer.size != weight.shape[0]:
                return None  # a weight of another shape (F.linear(x, fc.weight[:8])): not the layer's neurons
            weight_is = "computed from its own" if layer else "that is not an nn.Linear/nn.Conv2d weight"
            if layer is None:
                layer = self.new_layer(name, module, weight.shape[0], func is F.conv2d, weight.device)
                self.by_first_id.append(layer)  # ids keep increasing along this list
            kind = type(layer.module).__name__ if layer.module is not None else "a functional call"
            layer.foreign = True
            layer.fail(f"'{name}' ({kind}) computes its output with {func.__name__} on a weight {weight_is}, so ReDo "
                       "cannot re-draw its neurons' incoming weights")
            self.foreign[name] = layer
        return self.foreign[name]

    def owner_of(self, parameter: str) -> tuple[str, nn.Module | None]:
        """The module that owns a parameter (or a tensor computed from it) and its name; for a parameter of the
        model itself, the parameter's name and None."""
        if "." not in parameter:
            return parameter, None
        owner = parameter.rsplit(".", 1)[0]
        return owner, self.modules[owner]

    def unhandled_layer(self, name: str, parameter: str, result: Any, tensors: list[Tensor]) -> None:
        """An operation on the model's parameter that is no nn.Linear/nn.Conv2d call (an nn.Conv1d, an nn.LSTM, an
        x @ W): a layer ReDo can neither score nor recycle. Its output is followed like a refused layer's, so that
        it is an error if another layer reads it (an output layer of this kind is fine: outputs are never scored)."""
        owner, module = self.owner_of(parameter)
        if owner not in self.unhandled:
            kind = type(module).__name__ if module is not None else "a parameter"
            # An nn.Linear whose weight an einsum takes gets this entry under its name: read_through finds it.
            layer = self.new_layer(owner, module, 1, False, tensors[0].device)
            self.by_first_id.append(layer)
            if isinstance(module, (nn.Linear, nn.Conv2d)) and name in ("linear", "conv2d"):
                what = (f"is applied with {name} on a weight of another shape computed from its own, so ReDo can "
                        "neither score nor recycle it")
            elif isinstance(module, (nn.Linear, nn.Conv2d)):
                what = (f"is applied with {name}, not with its forward, F.linear or F.conv2d, so ReDo can neither "
                        "score nor recycle it")
            else:
                what = f"computes {name}, a layer ReDo cannot score or recycle (it handles nn.Linear and nn.Conv2d)"
            layer.unhandled = True
            layer.fail(f"'{owner}' ({kind}) {what}, and another layer reads it; pass skip=['{owner}'] to score the "
                       "other layers without it")
            self.unhandled.add(owner)
            self.order.append(layer)
        self.read_through(owner, tensors)
        self.taken.update(self.parameters[id(t)][1] for t in tensors if id(t) in self.parameters)
        reasons = {**self.sources(result), owner: "is a layer ReDo cannot score or recycle"}
        for item in tree_flatten(result)[0]:
            if isinstance(item, Tensor):
                self.opaque[id(item)] = (item, reasons)

    def idle_layers(self, model: nn.Module) -> list[str]:
        """The nn.Linear/nn.Conv2d layers of ``model`` that the pass did not run. One whose weight an operation of
        another kind took (as nn.MultiheadAttention takes its out_proj's) ran, as part of that layer."""
        idle = []
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and f"{name}.weight".lstrip(".") not in self.taken:
                parametrized = hasattr(module, "parametrizations")  # its weight is computed at each access
                if not (name in self.foreign if parametrized else self.layers[id(module.weight)].ran):
                    idle.append(name)
        return idle

    # -- bookkeeping ------------------------------------------------------------------------------

    def layers_in(self, ids: Tensor) -> list[_Layer]:
        """The layers whose neurons appear in ``ids``."""
        ids = _one_sample(ids)
        neurons = ids[ids >= 0] // 2
        if neurons.numel() == 0:
            return []
        starts = torch.tensor([layer.first_id for layer in self.by_first_id], device=neurons.device)
        present = torch.bincount(torch.bucketize(neurons, starts, right=True) - 1, minlength=len(starts))
        return [layer for layer, n in zip(self.by_first_id, present.tolist()) if n > 0]

    def sources(self, value: Any) -> dict[str, str]:
        """{layer name: reason} of the opaque tensors in ``value``."""
        merged: dict[str, str] = {}
        for item in tree_flatten(value)[0]:
            if isinstance(item, Tensor) and id(item) in self.opaque:
                for name, reason in self.opaque[id(item)][1].items():
                    merged.setdefault(name, reason)
        return merged

    def mark_opaque(self, result: Any, inputs: list[Tensor], reason: str, unknown_reader: str | None = None) -> None:
        reasons = self.sources(inputs)
        for tensor in inputs:
            if id(tensor) in self.ids:
                ids = self.ids[id(tensor)][1]
                activated = {layer.name for layer in self.layers_in(torch.where(ids % 2 == 1, ids, _NONE))}
                for layer in self.layers_in(ids):
                    reasons.setdefault(layer.name, reason)
                    if unknown_reader and layer.name in activated:  # its activation is read by an op ReDo cannot edit
                        layer.unknown_readers.add(unknown_reader)
                    elif unknown_reader in _EXPORTS:  # an output layer's values (a log), unless layers read it too
                        layer.raw_exports.add(unknown_reader)
        if reasons:
            for item in tree_flatten(result)[0]:
                if isinstance(item, Tensor):
                    self.ids.pop(id(item), None)
                    self.opaque[id(item)] = (item, reasons)

    # -- the mode ---------------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        tracked = [t for t in tensors if id(t) in self.ids]
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if func in (F.linear, F.conv2d) and isinstance(weight, Tensor):
            layer = self.layers.get(id(weight)) or self.foreign_layer(func, weight)
            if layer is not None:
                return self.run_layer(func, layer, args, kwargs)
        name = getattr(func, "__name__", str(func))
        parameter = next((self.parameters[id(t)][1] for t in tensors if id(t) in self.parameters), None)
        # A product that broadcasts a hidden layer against a parameter to more elements, as (h[:, None] * W).sum(-1)
        # does, makes neurons of its own; a gain keeps the shape.
        product = parameter is not None and name in _SCALINGS and self.broadcasts_hidden(tensors)
        # A parametrization (spectral or weight norm) computes a weight for F.linear/F.conv2d, which names that layer.
        if parameter is not None and (name not in _NEURON_FREE or product) and "parametrizations." not in parameter:
            result = func(*args, **kwargs)
            if any(isinstance(item, Tensor) for item in tree_flatten(result)[0]):
                if tracked:  # it reads a hidden layer: that layer goes through it
                    self.mark_opaque(result, tracked, f"goes through {name}", unknown_reader=name)
                self.unhandled_layer(name, parameter, result, tensors)
            return result
        if not tracked and not any(id(t) in self.opaque for t in tensors):
            result = func(*args, **kwargs)
            # Computed from a parameter (and no hidden layer): followed like one. Not an embedding's rows: looked up
            # by the input, they are data, which a mean over tokens may pool as it pools an image's pixels.
            if parameter is not None and name not in ("embedding", "embedding_bag"):
                for item in tree_flatten(result)[0]:
                    if isinstance(item, Tensor):
                        self.parameters[id(item)] = (item, parameter)
            return result
        pre_activation = None
        if name not in _KNOWN and len(tracked) == 1 and tensors[0] is tracked[0]:
            pre_activation = self.activation(tracked[0])  # before func, which may work in place
        result = func(*args, **kwargs)
        if name == "__setitem__":
            self.assign(*args)
            return result
        if not any(isinstance(item, Tensor) for item in tree_flatten(result)[0]):
            if name in _EXPORTS:  # a reader ReDo cannot see past, lest torch.from_numpy(h.numpy()) hide a hidden layer
                self.mark_opaque(None, tracked, f"leaves torch through {name}", unknown_reader=name)
            return result  # a shape, a size: no data flows on
        n_opaque = sum(id(t) in self.opaque for t in tensors)
        if name in _SUMS and len(tracked) + n_opaque >= 2:  # a residual stream; read() flags its writers
            self.mark_opaque(result, tensors, "residual")
        elif n_opaque:
            self.mark_opaque(result, tensors, f"goes through {name}")
        elif name in _MOVES:
            self.move(func, name, args, kwargs, result, tracked)
        elif name in _SCALINGS and len(tracked) == 1 and all(t is tracked[0] or t.numel() == 1 for t in tensors):
            self.ids[id(result)] = (result, self.ids[id(tracked[0])][1])
        elif name in _POOLS and len(tracked) == 1:
            self.pool(name, result, tracked[0], pooled_dims=1 if "1d" in name else 2)
        elif name in _REDUCTIONS and tensors == tracked and len(tracked) == 1:  # not torch.max(x, y)
            self.reduce(name, args, kwargs, result, tracked[0])
        elif name in _NORMS:
            for layer in self.layers_in(self.ids[id(tracked[0])][1]):
                layer.fail(f"'{layer.name}' is followed by {name}, which mixes the layer's neurons, so recycling "
                           "could not keep the outputs unchanged")
            self.ids[id(result)] = (result, self.ids[id(tracked[0])][1])
        elif (pre_activation is not None and isinstance(result, Tensor) and torch.equal(result, pre_activation)
              and self.is_activation(func, args, kwargs, tracked[0])):
            self.activate(result, tracked[0])
        else:
            reason = f"goes through {name}"
            public = name.lstrip("_")  # F.threshold runs as _threshold
            if (pre_activation is not None and isinstance(result, Tensor) and result.shape == tracked[0].shape
                    and hasattr(F, public)):  # a flip or a cumsum keeps the shape too, but is no nonlinearity
                reason += (f" (if {public} is the network's nonlinearity, pass activation=F.{public}, or the module "
                           "that applies it, e.g. activation=nn.LeakyReLU(0.2))")
            self.mark_opaque(result, tracked, reason, unknown_reader=name)
        return result

    def broadcasts_hidden(self, tensors: list[Tensor]) -> bool:
        """Whether an elementwise product of ``tensors`` has more elements than the hidden tensor among them."""
        hidden = [t.numel() for t in tensors if id(t) in self.ids or id(t) in self.opaque]
        return bool(hidden) and torch.broadcast_shapes(*(t.shape for t in tensors)).numel() > max(hidden)

    def is_activation(self, func, args: tuple, kwargs: dict, x: Tensor) -> bool:
        """Whether ``func``, called as here, equals the activation beyond this batch's values too: so that ReLU6 or
        a clamp to [0, 1] is refused on every batch, not only on one whose values reach the bound."""
        probe = _PROBE.to(x.device, x.dtype).repeat(x.numel() // len(_PROBE) + 1)[:x.numel()].view(x.shape)
        probe_args, probe_kwargs = tree_map(lambda a: probe.clone() if a is x else a, (args, kwargs))
        return torch.equal(func(*probe_args, **probe_kwargs), self.activation(probe.clone()))

    def run_layer(self, func, layer: _Layer, args: tuple, kwargs: dict) -> Tensor:
        if layer.ran:
            raise ValueError(f"layer '{layer.name}' runs more than once in a forward pass; dormant neurons are only "
                             "defined for layers that run once")
        x = args[0] if args else kwargs["input"]
        output = func(*args, **kwargs)
        layer.ran = True
        self.order.append(layer)
        self.read(layer, x)
        channel_dim = output.dim() - (3 if layer.conv else 1)
        shape = [1] * output.dim()
        shape[channel_dim] = layer.size
        neuron_ids = 2 * (layer.first_id + torch.arange(layer.size, device=output.device))
        self.ids[id(output)] = (output, neuron_ids.view(shape).expand(output.shape))
        return output

    def read_through(self, reader: str, value: Any) -> None:
        """Records that ``reader`` reads the layers behind the opaque tensors in ``value``: through a residual sum
        (their neurons' weights are not their own), or through an operation ReDo cannot edit (refused)."""
        for name, reason in self.sources(value).items():
            source = self.named[name]
            source.readers.setdefault(reader, torch.full((1,), _NONE))
            if reason == "residual":
                source.residual = True
            else:
                source.fail(f"'{name}' {reason} before '{reader}' reads it")

    def read(self, reader: _Layer, x: Tensor) -> None:
        """Records which hidden neurons ``reader`` reads, per input column (Linear) or channel (Conv2d)."""
        self.read_through(reader.name, x)
        if id(x) not in self.ids:
            return
        ids = _one_sample(self.ids[id(x)][1])
        if reader.conv:
            per_channel = ids.movedim(-3, 0).reshape(ids.shape[-3], -1)  # (in_channels, everything else)
            column_ids = per_channel.amax(dim=1)
            mixed = bool(((per_channel != column_ids[:, None]) & (per_channel != _NONE)).any())
        else:
            rows = ids.reshape(-1, ids.shape[-1])
            column_ids = rows[0]
            mixed = bool((rows != column_ids).any())
        for layer in self.layers_in(ids):
            layer.readers[reader.name] = column_ids
            neuron = column_ids // 2
            own = (column_ids >= 0) & (neuron >= layer.first_id) & (neuron < layer.first_id + layer.size)
            if mixed:
                layer.fail(f"'{reader.name}' reads '{layer.name}' with several neurons in one input "
                           f"{'channel' if reader.conv else 'column'}")
            elif (own & (column_ids % 2 == 0)).any():
                layer.fail(f"'{reader.name}' reads '{layer.name}' without the activation (pass activation=... "
                           "if the network applies another nonlinearity)")
            if reader.foreign:
                kind = type(reader.module).__name__ if reader.module is not None else "a functional call"
                what = ("computes the weight it applies" if isinstance(reader.module, (nn.Linear, nn.Conv2d))
                        else "is not an nn.Linear/nn.Conv2d")
                layer.fail(f"'{reader.name}' ({kind}), which reads '{layer.name}', {what}, so the outgoing weights of "
                           f"'{layer.name}''s neurons cannot be zeroed")
            elif reader.conv and reader.module.groups != 1:
                layer.fail(f"'{reader.name}', which reads '{layer.name}', is a grouped convolution "
                           f"(groups={reader.module.groups})")

    def move(self, func, name: str, args: tuple, kwargs: dict, result: Any, tracked: list[Tensor]) -> None:
        def as_ids(value):
            if isinstance(value, Tensor):
                if id(value) in self.ids:
                    return self.ids[id(value)][1]
                return torch.full_like(value, _NONE, dtype=torch.long)
            return value

        if name in _KEEP_IDS:
            moved = self.ids[id(tracked[0])][1]
        elif name == "__getitem__":  # its index (ints, slices, index or mask tensors) picks the same ids
            if any(t is not args[0] for t in tracked):
                self.mark_opaque(result, tracked, "is used as an index")
                return
            moved = as_ids(args[0])[args[1]]
        elif name == "pad":  # torch passes it as pad(input, pad, mode=..., value=...) however it was called
            if kwargs["mode"] != "constant" or (kwargs["value"] or 0) != 0:
                self.mark_opaque(result, tracked, "goes through a padding other than zeros")
                return
            ids = as_ids(args[0])
            batch_free = ids.dim() > 1 and ids.stride(0) == 0
            moved = F.pad(ids[:1] if batch_free else ids, args[1], value=_NONE)
            moved = moved.expand(result.shape) if batch_free else moved
        else:
            ids_args, ids_kwargs = [], {}
            for arg in args:
                is_sequence = isinstance(arg, (list, tuple))
                ids_args.append(type(arg)(as_ids(item) for item in arg) if is_sequence else as_ids(arg))
            for key, value in kwargs.items():
                ids_kwargs[key] = as_ids(value)
            moved = (torch.Tensor.reshape if name == "view" else func)(*ids_args, **ids_kwargs)
        for item, item_ids in zip(tree_flatten(result)[0], tree_flatten(moved)[0]):
            if isinstance(item, Tensor) and isinstance(item_ids, Tensor) and item.shape == item_ids.shape:
                self.ids[id(item)] = (item, item_ids)

    def assign(self, target: Tensor, index: Any, value: Any) -> None:
        """``target[index] = value``, in place: the target's ids at ``index`` become the value's, as when a layer's
        activations are written into a buffer of features (or a column is zeroed)."""
        inputs = [t for t in tree_flatten((target, index, value))[0] if isinstance(t, Tensor)]
        indexes = any(id(t) in self.ids for t in tree_flatten(index)[0])
        if indexes or any(id(t) in self.opaque for t in inputs):
            self.mark_opaque(target, [t for t in inputs if id(t) in self.ids or id(t) in self.opaque],
                             "is used as an index" if indexes else "is written into a tensor ReDo cannot follow")
            return
        ids = (self.ids[id(target)][1].clone() if id(target) in self.ids
               else torch.full_like(target, _NONE, dtype=torch.long))
        ids[index] = self.ids[id(value)][1] if isinstance(value, Tensor) and id(value) in self.ids else _NONE
        self.ids[id(target)] = (target, ids)

    def pool(self, name: str, result: Any, x: Tensor, pooled_dims: int) -> None:
        ids = self.ids[id(x)][1]
        channel_ids = _one_neuron_each(ids, range(ids.dim() - pooled_dims, ids.dim()))
        if channel_ids is None:
            self.mark_opaque(result, [x], "is pooled across neurons", unknown_reader=name)
            return
        values = result[0] if isinstance(result, tuple) else result  # max_pool(..., return_indices=True)
        pooled_ids = channel_ids.reshape(*channel_ids.shape, *[1] * pooled_dims)
        self.ids[id(values)] = (values, pooled_ids.expand(values.shape))

    def reduce(self, name: str, args: tuple, kwargs: dict, result: Any, x: Tensor) -> None:
        """Like a pool: each neuron's elements may be reduced together, never two neurons' (a mean over channels)."""
        ids = self.ids[id(x)][1]
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        reduced = _one_neuron_each(ids, [dim] if isinstance(dim, int) else dim or range(ids.dim()))  # None, (): all
        if reduced is None:
            self.mark_opaque(result, [x], f"is reduced across neurons by {name}", unknown_reader=name)
            return
        values = result[0] if isinstance(result, tuple) else result  # max(x, dim) returns (values, indices)
        self.ids[id(values)] = (values, reduced.reshape(values.shape))  # with keepdim, the same ids

    def activate(self, result: Tensor, x: Tensor) -> None:
        full_ids, abs_values = self.ids[id(x)][1], result.detach().abs()
        ids, samples = _one_sample(full_ids), 1
        if ids is not full_ids:  # the same ids for every sample: sum over the batch first
            abs_values, samples = abs_values.sum(dim=0, dtype=torch.double), full_ids.shape[0]
        pre = (ids >= 0) & (ids % 2 == 0)
        neurons, values = ids[pre] // 2, abs_values[pre].double()
        for layer in self.layers_in(ids):
            own = (neurons >= layer.first_id) & (neurons < layer.first_id + layer.size)
            index = neurons[own] - layer.first_id
            layer.abs_sum.index_add_(0, index, values[own])
            layer.count += torch.bincount(index, minlength=layer.size) * samples
        self.ids[id(result)] = (result, torch.where(pre, ids + 1, ids).expand(full_ids.shape))

    def finish(self, outputs: Any) -> None:
        self.returned = set(self.sources(outputs))
        for item in tree_flatten(outputs)[0]:
            if isinstance(item, Tensor) and id(item) in self.ids:
                for layer in self.layers_in(self.ids[id(item)][1]):
                    self.returned.add(layer.name)
                    if layer.readers:
                        layer.fail(f"'{layer.name}' is read by other layers and is also part of the model's output")
        # A hidden layer's values that reach the outputs by another way than its readers (z.sum() or z[:, :3] added
        # to them) change with its recycled neurons: before the activation, or after it, in a sum.
        for name, reason in self.sources(outputs).items():
            layer = self.named[name]
            if layer.readers and not layer.residual and not layer.unknown_readers:  # those: named in _trace
                how = "is added to another layer's output" if reason == "residual" else reason
                layer.fail(f"'{name}' {how} on a way to the model's output besides the layers that read it "
                           f"({', '.join(layer.readers)}), so recycling would change the outputs")
        self.ids.clear()
        self.opaque.clear()


def _one_neuron_each(ids: Tensor, dims: Iterable[int]) -> Tensor | None:
    """The element ids reduced over ``dims``, if each slice reduced holds one neuron's elements (or none), else
    None."""
    dims = {d % ids.dim() for d in dims}
    kept = [d for d in range(ids.dim()) if d not in dims]
    flat = ids.permute(*kept, *dims).reshape(*[ids.shape[d] for d in kept], -1)
    reduced = flat.amax(dim=-1)
    return None if ((flat != reduced[..., None]) & (flat != _NONE)).any() else reduced


def _one_sample(ids: Tensor) -> Tensor:
    """``ids[0]`` when ``ids`` repeats along the batch dimension (stride 0, as made by ``expand``), else ``ids``."""
    return ids[0] if ids.dim() > 1 and ids.stride(0) == 0 else ids


def _trace(model: nn.Module, x: Tensor | tuple[Tensor, ...], activation: Callable[[Tensor], Tensor],
           forward: Callable | None, skip: Iterable[str] = (), recycling: bool = False) -> list[_Layer]:
    """Runs one forward pass; returns the hidden layers (those read by another layer), in execution order."""
    scripted = next((name or type(model).__name__ for name, module in model.named_modules()
                     if isinstance(module, torch.jit.ScriptModule)), None)
    if scripted is not None:  # TorchScript runs its ops outside Python, where ReDo cannot follow them
        raise ValueError(f"'{scripted}' is a TorchScript module (torch.jit.script/trace), whose layers ReDo cannot "
                         "follow: pass the module before scripting it")
    tracer = _Tracer(model, activation)
    call = forward or model
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]  # e.g. batch norm's running statistics
    hooks = []  # which module runs: names the layer of an F.linear/F.conv2d on a weight of no nn.Linear/nn.Conv2d
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None or hasattr(module, "parametrizations"):
            hooks.append(module.register_forward_pre_hook(
                lambda module, args, name=name: tracer.running.append((name, module))))
            hooks.append(module.register_forward_hook(lambda *_: tracer.running.pop() and None, always_call=True))
    try:
        with torch.no_grad(), tracer:
            outputs = call(*x) if isinstance(x, tuple) else call(x)
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    tracer.finish(outputs)
    for layer in tracer.order:
        ops = ", ".join(sorted(layer.unknown_readers))
        # Most often a log, so the way to keep one goes with the refusal.
        hint = (" (values that leave torch may come back unseen: to log them, keep the tensor, e.g. self.h = "
                "h.detach(), and convert it after the forward pass)"
                if (layer.unknown_readers | layer.raw_exports) & _EXPORTS else "")
        if layer.unknown_readers and not layer.readers:
            layer.fail(f"'{layer.name}' is read only by {ops}, not by an nn.Linear/nn.Conv2d, so the outgoing weights "
                       f"of its neurons are unknown{hint}")
        elif layer.unknown_readers:  # its activation also reaches the outputs another way
            layer.fail(f"'{layer.name}' is read by {', '.join(layer.readers)}, and also by {ops}, not by an "
                       f"nn.Linear/nn.Conv2d, so some outgoing weights of its neurons are unknown{hint}")
        if layer.raw_exports and layer.readers:  # recycling re-draws those values, which may come back anywhere
            layer.fail(f"'{layer.name}' is read by {', '.join(layer.readers)}, and its values before the activation "
                       f"also by {', '.join(sorted(layer.raw_exports))}, which recycling would change{hint}")
    skip = {skip} if isinstance(skip, str) else set(skip)
    # An nn.Linear/nn.Conv2d that did not run (an actor's under forward=agent.get_value) would be left out silently;
    # when recycling, it may also read a recycled neuron, whose outgoing weights there would stay.
    idle = tracer.idle_layers(model)
    # A layer no other reads, whose values leave torch before any activation and are not returned: an output kept
    # for a log, or a hidden layer whose values come back as a tensor nothing links to it. ReDo cannot tell which.
    unseen = [layer.name for layer in tracer.order if layer.raw_exports and not layer.readers
              and not layer.unknown_readers and layer.name not in tracer.returned]
    unknown = sorted(skip - set(tracer.unhandled) - set(idle) - set(unseen))
    if unknown:
        raise ValueError(f"skip names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not among the layers "
                         f"ReDo cannot handle in this forward pass ({sorted({*tracer.unhandled, *unseen}) or 'none'}) "
                         f"or those that did not run ({idle or 'none'})")
    for name in unseen:
        if name not in skip:
            ops = ", ".join(sorted(tracer.named[name].raw_exports))
            raise ValueError(f"'{name}''s output leaves torch through {ops} before any activation and is not returned "
                             "by the model, so ReDo cannot tell an output kept for a log from a hidden layer whose "
                             "values come back as a new tensor: keep the forward pass in torch up to the activation "
                             f"(to log values, keep the tensor, e.g. self.q = q.detach(), and convert it after the "
                             f"pass), or pass skip=['{name}'] if it is an output layer")
    hidden = [layer for layer in tracer.order if layer.readers or layer.unknown_readers]
    for layer in hidden:
        if layer.unhandled and layer.name not in skip:
            raise ValueError(layer.problem)
    it, them = ("it", "it") if len(idle) == 1 else ("they", "them")
    if idle and recycling:
        raise ValueError(f"cannot recycle: {', '.join(map(repr, idle))} did not run in the forward pass, so the "
                         f"neurons {it} may read would keep their outgoing weights there: pass a forward= that runs "
                         "every layer, or recycle the submodule that runs")
    if set(idle) - skip:
        raise ValueError(f"{', '.join(map(repr, idle))} did not run in the forward pass, so ReDo would leave {them} "
                         f"out: pass a forward= that runs every layer, or skip={idle} to score the others knowingly")
    hidden = [layer for layer in hidden if not layer.unhandled]
    if not hidden:
        ran = sum(not layer.unhandled for layer in tracer.order)
        raise ValueError(f"{type(model).__name__} ran {ran} Linear/Conv2d layer(s), none of them read by another: "
                         "scoring needs at least one hidden layer before the output layers")
    return hidden


def _score(layer: _Layer) -> Tensor:
    mean_abs = (layer.abs_sum / layer.count).float()
    return mean_abs / (mean_abs.mean() + _EPS)


def _scored(layer: _Layer) -> bool:
    if bool((layer.count > 0).all()):
        return True
    if layer.residual:
        return False  # a residual-stream writer has no activation of its own (recycling names or refuses it)
    raise ValueError(layer.problem or f"no activation of '{layer.name}' was found (pass activation=... if the network "
                                      "applies another nonlinearity)")


def dormant_scores(model: nn.Module, x: Tensor | tuple[Tensor, ...], activation: Callable[[Tensor], Tensor] = F.relu,
                   forward: Callable | None = None, skip: Iterable[str] = ()) -> dict[str, Tensor]:
    """Scores every hidden neuron of ``model`` on the batch ``x``.

    Runs the forward pass once, without gradients, following each Linear/Conv2d output to where
    ``activation`` is applied to it (see the module docstring). Neuron i scores
    ``E|a_i| / (mean_k E|a_k| + 1e-9)``, ``a`` that activation, averaged over the batch (and a
    channel's positions). Output layers are not scored, nor residual-stream writers without an
    activation of their own. The train/eval mode is left alone (call ``model.eval()`` first if it
    has dropout or batch norm); buffers such as batch norm's statistics are restored.

    Args:
        model: the network. Each of its Linear/Conv2d layers runs at most once per forward pass.
        x: a batch of inputs, e.g. states sampled uniformly from a replay buffer, or a tuple of
            batches passed as ``forward(*x)`` (e.g. a critic's states and actions).
        activation: the nonlinearity that follows each hidden layer.
        forward: what to call instead of ``model``, e.g. ``agent.get_action_and_value`` for a
            module with no ``forward``; it must run every ``nn.Linear``/``nn.Conv2d`` of ``model``.
        skip: hidden layers of a kind ReDo cannot score (an ``nn.Conv1d``, an ``nn.LSTM``, a
            parameter applied with ``@`` or ``einsum``: any operation on a parameter of ``model``
            that makes neurons, other than an ``nn.Linear``/``nn.Conv2d`` call), named as the error
            that refuses them names them, to leave out knowingly; also ``nn.Linear``/``nn.Conv2d`` layers
            that ``forward`` does not run (e.g. an actor under ``agent.get_value``), and output layers
            whose values only leave torch (see the module docstring). Other output layers of any kind
            need not be named.

    Returns:
        ``{module name: float32 tensor of shape (out_features or out_channels,)}``, in execution
        order, names as in ``model.named_modules()``.

    Raises:
        ValueError: a layer runs more than once, there is no hidden layer, a hidden layer's
            activation cannot be found, a hidden layer is of a kind ReDo cannot score and not
            in ``skip``, an ``nn.Linear``/``nn.Conv2d`` does not run and is not in ``skip``, a layer
            read by no other hands its output to Python before any activation and the model does
            not return it (not in ``skip``), or the model holds a TorchScript module (names the layer).
    """
    return {layer.name: _score(layer) for layer in _trace(model, x, activation, forward, skip) if _scored(layer)}


def dormant_fractions(scores: dict[str, Tensor], tau: float) -> dict[str, float]:
    """Fraction of tau-dormant neurons (``score <= tau``) per layer, and ``"total"`` over all of them.

    ``"total"`` pools the neurons of every layer, so wide layers weigh more (for the Nature CNN,
    672 neurons: 32 + 64 + 64 + 512).
    """
    dormant = {name: int((score <= tau).sum()) for name, score in scores.items()}
    fractions = {name: dormant[name] / score.numel() for name, score in scores.items()}
    fractions["total"] = sum(dormant.values()) / max(1, sum(score.numel() for score in scores.values()))
    return fractions


def dormant_overlap(current: Tensor, earlier: Tensor) -> float:
    """Overlap coefficient ``|A & B| / min(|A|, |B|)`` of two sets of neurons given as boolean masks.

    The paper's Fig. 5 takes ``A`` = the neurons of a layer dormant now (``scores <= tau``) and ``B`` =
    those dormant at any earlier check (the union of the earlier masks): 1 means every neuron dormant now
    was dormant before (or the other way round, if ``B`` is the smaller set), 0 that none was. When
    either set is empty no neuron can be dormant in both, and the result is 0.
    """
    if current.shape != earlier.shape:
        raise ValueError(f"masks of different shapes: {tuple(current.shape)} and {tuple(earlier.shape)}")
    smaller = min(int(current.sum()), int(earlier.sum()))
    return int((current & earlier).sum()) / smaller if smaller else 0.0


def srank(features: Tensor, delta: float = 0.01) -> int:
    """Effective rank srank_delta of a feature matrix (Kumar et al., ICLR 2021), as the ReDo paper uses it.

    ``features`` is (N, d): one row per state, e.g. the post-ReLU penultimate layer on N >= d replay states.
    With singular values s_1 >= ... >= s_min(N,d) (no centring, no normalization of the rows), the result is
    the smallest k with ``s_1 + ... + s_k >= (1 - delta) * sum_i s_i``: the sum is over singular values,
    not their squares. 0 for an all-zero matrix. Plasticine calls this quantity "stable rank"; it is not
    the entropy-based effective rank of Roy and Vetterli. Computed in float64.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be a (states, features) matrix, got shape {tuple(features.shape)}")
    singular_values = torch.linalg.svdvals(features.detach().double())
    total = singular_values.sum()
    if total == 0:
        return 0
    kept = singular_values.cumsum(0) / total
    return min(int((kept < 1 - delta).sum()) + 1, len(singular_values))  # the last cumsum may round below 1


def _default_init(weight: Tensor) -> None:
    # What nn.Linear.reset_parameters and nn.Conv2d.reset_parameters draw.
    nn.init.kaiming_uniform_(weight, a=5**0.5)


def _optimizer_error(optimizer: torch.optim.Optimizer | None, params: dict[str, Tensor]) -> str | None:
    """Why the optimizer's state of these parameters could not be reset entry by entry, or None."""
    if optimizer is None:
        return None
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, param in params.items():
        if id(param) not in held:  # e.g. the actor's optimizer given for a critic, or a frozen layer
            return (f"'{name}' is not among the optimizer's parameters, so its moments could not be reset: pass the "
                    "optimizer that updates it (or optimizer=None to recycle without resetting any)")
        for key, value in optimizer.state.get(param, {}).items():
            if isinstance(value, Tensor) and value.numel() > 1 and value.shape != param.shape:
                return (f"the optimizer keeps '{key}' of shape {tuple(value.shape)} for '{name}' of shape "
                        f"{tuple(param.shape)} (factored or flattened, as Adafactor's or L-BFGS's), which ReDo cannot "
                        "reset entry by entry: use an optimizer whose state is shaped like each parameter (Adam, "
                        "SGD, RMSprop, ...), or pass optimizer=None and reset it yourself")
    return None


def _zero_optimizer_entries(optimizer: torch.optim.Optimizer | None, param: Tensor, index: tuple,
                            reset_step: bool) -> None:
    if optimizer is None or param not in optimizer.state:
        return
    state = optimizer.state[param]
    for value in state.values():
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
    forward: Callable | None = None,
    skip: Iterable[str] = (),
) -> dict[str, dict]:
    """Recycles the tau-dormant neurons of ``model``, scored on ``x``, in place.

    Every hidden neuron with ``score <= tau`` (see :func:`dormant_scores`) gets its incoming weights
    re-drawn with ``init_fn`` and its bias set to 0; then its outgoing weights (the columns, or input
    channels, of every reader that hold it) are set to 0, after all re-draws, so a weight between two
    recycled neurons ends at 0. Parameters stay the same tensor objects. Each optimizer state tensor
    shaped like an edited parameter (Adam's moments, SGD's momentum, ...) is zeroed at exactly the
    edited entries; nothing else is touched.

    Args:
        model: the network; its graph is read from this forward pass (see the module docstring).
        optimizer: the model's optimizer, or None. State is looked up by parameter object.
        x: the batch to score on, or a tuple of batches passed as ``forward(*x)``.
        tau: dormancy threshold, >= 0. With 0 the outputs on ``x`` are unchanged.
        activation: the nonlinearity that follows each hidden layer.
        init_fn: an in-place initializer for a tensor shaped like a layer's weight, e.g.
            ``nn.init.xavier_uniform_``: the one the network was built with. Default: PyTorch's
            default for Linear and Conv2d, ``kaiming_uniform_(w, a=sqrt(5))``.
        reset_optimizer_step: also set ``step`` of every edited parameter to 0. This restarts Adam's
            bias correction for the **whole** tensor, rescaling every neuron's updates, not only the
            recycled ones'. Off by default, as in the authors' code.
        forward: what to call instead of ``model``, as in :func:`dormant_scores`.
        skip: layers ReDo cannot handle, left out knowingly, as in :func:`dormant_scores`. They
            are not recycled, and a layer they read cannot be. Layers that do not run cannot be
            skipped here: every ``nn.Linear``/``nn.Conv2d`` must run, or their inputs' outgoing
            weights would be missed.

    Returns:
        ``{"recycled": {layer: neurons recycled}, "scores": {layer: scores before recycling},
        "not_recyclable": {layer: reason}}`` (the last: residual-stream writers, left alone).

    Raises:
        ValueError: ``tau < 0``, a hidden layer cannot be recycled exactly (names the layer and
            the reason), or the optimizer's state of a parameter to edit cannot be reset entry by
            entry (the parameter is not among the optimizer's, or its state is factored or
            flattened, as Adafactor's). Raised before anything is modified.
    """
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    init_fn = init_fn or _default_init
    hidden = _trace(model, x, activation, forward, skip, recycling=True)
    for layer in hidden:
        if layer.problem is not None:
            raise ValueError(f"cannot recycle: {layer.problem}")
    recyclable = [layer for layer in hidden if _scored(layer) and not layer.residual]
    masks = {layer.name: _score(layer) <= tau for layer in recyclable}
    modules = dict(model.named_modules())
    edited = {f"{layer.name}.{kind}": getattr(layer.module, kind) for layer in recyclable for kind in ("weight", "bias")
              if getattr(layer.module, kind) is not None}
    edited.update({f"{reader}.weight": modules[reader].weight for layer in recyclable for reader in layer.readers})
    error = _optimizer_error(optimizer, edited)
    if error is not None:
        raise ValueError(f"cannot recycle: {error}")

    # Re-draw every incoming weight first, then zero every outgoing weight (see docstring).
    for layer in recyclable:
        mask = masks[layer.name]
        if not mask.any():
            continue
        weight = layer.module.weight
        # Contiguous, so the same seed gives the same weights whatever the layer's memory format.
        fresh = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
        init_fn(fresh)
        weight[mask] = fresh[mask]
        _zero_optimizer_entries(optimizer, weight, (mask,), reset_optimizer_step)
        if layer.module.bias is not None:
            layer.module.bias[mask] = 0
            _zero_optimizer_entries(optimizer, layer.module.bias, (mask,), reset_optimizer_step)
    for layer in recyclable:
        mask = masks[layer.name]
        if not mask.any():
            continue
        recycled_ids = 2 * (layer.first_id + mask.nonzero().flatten()) + 1
        for reader_name, column_ids in layer.readers.items():
            weight = modules[reader_name].weight
            columns = torch.isin(column_ids, recycled_ids.to(column_ids.device))
            index = (slice(None), columns.to(weight.device))
            weight[index] = 0
            _zero_optimizer_entries(optimizer, weight, index, reset_optimizer_step)

    return {
        "recycled": {layer.name: int(masks[layer.name].sum()) for layer in recyclable},
        "scores": {layer.name: _score(layer) for layer in hidden if bool((layer.count > 0).all())},
        "not_recyclable": {layer.name: f"'{layer.name}' writes into a residual stream (added to another layer's "
                           "output), so no weights belong to one of its channels" for layer in hidden
                           if layer.residual},
    }
