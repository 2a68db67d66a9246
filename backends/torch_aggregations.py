"""The modules a node uses to combine its incoming edges (`nddr`, `gate`, `mix`; `sum` needs none),
written once for the supernet and the compact network. Torch only: `export_compact` copies their
source verbatim into the standalone `compact.py`.

Each takes one slot per incoming edge, in `IR.in_edges()` order, each slot holding the (gated)
edge output or None where that edge contributes nothing to the state being computed.

>>> NddrAggregation(2, 4, image=False)([torch.ones(3, 4), None]).shape
torch.Size([3, 4])
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def stack_blocks(blocks: list, states: int) -> Tensor:
    """K states' inputs, each `[K, B, ...]` or `[1, B, ...]` (the same for all; None: zeros), as one `[K, B, k, ...]`."""
    present = next(block for block in blocks if block is not None)
    shape = (states,) + tuple(present.shape[1:])
    zero = present.new_zeros(())
    return torch.stack([(zero if block is None else block).expand(shape) for block in blocks], dim=2)


def gate_stack(stacked: Tensor, slot_gates: Tensor) -> Tensor:
    """A `[K, B, k, ...]` stack of K states' inputs times the `[K, k]` gates of each state on each input."""
    return stacked * slot_gates.view(slot_gates.shape + (1,) * (stacked.dim() - 2)).transpose(1, 2)


def gated_slots(blocks: list, slot_gates: Tensor) -> tuple[list, list]:
    """`forward`'s arguments for the same inputs: each slot gated and flat `[K·B, ...]`, and its `[K]` gates.
    Under torch.compile the aggregations take these: inductor fuses each product into its reader."""
    present = next(block for block in blocks if block is not None)
    states = slot_gates.shape[0]
    shape, per_input = (states,) + tuple(present.shape[1:]), (states,) + (1,) * (present.dim() - 1)
    slots = [None if block is None else (block * slot_gates[:, i].view(per_input)).expand(shape).flatten(0, 1)
             for i, block in enumerate(blocks)]
    return slots, [None if block is None else slot_gates[:, i] for i, block in enumerate(blocks)]


class NddrAggregation(nn.Module):
    """MTL-NAS's NDDR fusion: concatenate the inputs along channels (zeros in an empty slot: an
    absent edge is one whose gate is 0), then 1x1 conv (a linear layer for vectors), a norm, ReLU
    back to the node's width. `norm` is MTL-NAS's `batch` norm, a `layer` norm (per sample; on
    images a group norm of one group, over channels and positions), or `none`. `fusion` = (w_t, w_s)
    starts the 1x1 conv as w_t times the identity on the slots `own` marks (shared among them) and
    w_s / k on each of the k others; None keeps torch's random initialisation."""

    NORMS = ("batch", "layer", "none")

    def __init__(self, inputs: int, width: int, image: bool, own: list | None = None,
                 fusion: tuple | None = None, norm: str = "batch") -> None:
        super().__init__()
        self.config = dict(inputs=inputs, width=width, image=image, norm=norm)
        if image:
            self.fuse = nn.Conv2d(inputs * width, width, 1, bias=False)
        else:
            self.fuse = nn.Linear(inputs * width, width, bias=False)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(width) if image else nn.BatchNorm1d(width)
        elif norm == "layer":
            self.norm = nn.GroupNorm(1, width) if image else nn.LayerNorm(width)
        elif norm == "none":
            self.norm = nn.Identity()
        else:
            raise ValueError(f"unknown nddr norm {norm!r} (known: {', '.join(self.NORMS)})")
        self.relu = nn.ReLU()
        if fusion is not None:
            self.start_as(list(own) if own is not None else [True] * inputs, fusion)

    @torch.no_grad()
    def start_as(self, own: list, fusion: tuple) -> None:
        """[w_t·I, (w_s/k)·I, ...]: start from the node's own input, a little of the k others."""
        width, (self_weight, other_weight) = self.config["width"], fusion
        mine, others = max(1, own.count(True)), max(1, own.count(False))
        weight = self.fuse.weight.view(width, len(own), width, -1)
        weight.zero_()
        for slot, is_own in enumerate(own):
            weight[:, slot, :, 0] = (self_weight / mine if is_own else other_weight / others) * torch.eye(width)

    def forward(self, slots: list) -> Tensor:
        """The mixing of the inputs present; an empty slot's columns of the weight are left out
        rather than multiplied by zeros (the same result, and the cost `compact_cost` counts)."""
        present = [i for i, slot in enumerate(slots) if slot is not None]
        joined = torch.cat([slots[i] for i in present], dim=1)
        if len(present) == len(slots):
            return self.mixed(joined)
        return self._mixed_by(joined, self._columns(present, len(slots)))

    def mixed(self, joined: Tensor) -> Tensor:
        """The inputs' channel concatenation `[B, k·C, ...]` mixed back to `[B, C, ...]`."""
        return self.relu(self.norm(self.fuse(joined)))

    def _columns(self, present: list[int], inputs: int) -> Tensor:
        """The 1x1 weight's columns of the inputs `present`, `[C, p, C, ...]`."""
        width = self.config["width"]
        return self.fuse.weight.view((width, inputs, width) + self.fuse.weight.shape[2:])[:, present]

    def _mixed_by(self, joined: Tensor, columns: Tensor) -> Tensor:
        """`mixed` of the present inputs' concatenation with their columns of the weight."""
        weight = columns.flatten(1, 2)
        mixed = nn.functional.conv2d(joined, weight) if self.config["image"] else nn.functional.linear(joined, weight)
        return self.relu(self.norm(mixed))

    def gated_forward(self, blocks: list, slot_gates: Tensor) -> Tensor:
        """`forward` of one state's ungated image inputs, the gates applied here: `blocks[i]` is input
        i as `[1, B, C, H, W]` (None: absent), `slot_gates` the `[1, k]` gates. The mixing is linear in
        each input, so the gates scale the 1x1 conv's weight columns, not the inputs: one small
        product instead of k full-size ones, and an absent input leaves its columns out instead of
        multiplying zeros (a search step of MTL-NAS's space 0.90-0.94x the time). On vectors, and for
        several states, the k products cost less than the weight's reshaping (measured): not used there."""
        if torch.compiler.is_compiling():
            return self.forward(gated_slots(blocks, slot_gates)[0])
        present = [i for i, block in enumerate(blocks) if block is not None]
        columns = self._columns(present, len(blocks))  # [C, p, C, 1, 1]
        joined = torch.cat([blocks[i][0] for i in present], dim=1)  # [B, p·C, H, W]
        return self._mixed_by(joined, columns * slot_gates[0, present].view(1, -1, 1, 1, 1))


class GateAggregation(nn.Module):
    """Input-dependent soft sharing (MTNAS, MMoE): a linear layer on the query gives one routing
    logit per input, and a softmax over the inputs present weights them: `Σ_i w_i · input_i`. The
    query is the globally pooled concatenation of the inputs (zeros in an empty slot), or, with
    `query_width`, the (pooled) tensor passed as `query` (the network input, as MMoE's gates see);
    with `query_width=0` there is none, and the logits are the layer's bias (a task's own gate).

    An input is absent from the softmax when its slot is empty, or when its gate (`gates[i]`, one
    value per stacked state, or one for all) is exactly 0: an edge left out of a route (a hard or
    sampled categorical choice, a discretised bernoulli) takes no weight. Soft gates weight the
    inputs as they come (`input_i` is the gated edge output). A state whose inputs are all absent
    gets zeros."""

    BMM_ABOVE = 1024  # values per input and sample above which the eager weighted sum is one batched product

    def __init__(self, inputs: int, width: int, query_width: int | None = None) -> None:
        super().__init__()
        self.config = dict(inputs=inputs, width=width, query_width=query_width)
        self.route = nn.Linear(inputs * width if query_width is None else query_width, inputs)

    def forward(self, slots: list, gates: list | None = None, query: Tensor | None = None) -> Tensor:
        present = next(s for s in slots if s is not None)
        filled = [torch.zeros_like(present) if s is None else s for s in slots]
        # eager: the inputs as one [B, k, ...] tensor, the query's concatenation a view of it, the weighted sum
        # one product and a sum, or one batched matrix product on large inputs (a loop over the inputs costs a
        # few ops per input; benchmarks/aggregation_step.py). Compiled: the loop, which inductor fuses into one
        # kernel reading the inputs where they are (the stack it would copy).
        eager = not torch.compiler.is_compiling()
        stacked = torch.stack(filled, dim=1) if eager else None
        if self.config["query_width"] == 0:  # a task's own gate: softmax(W e_t), a learned logit per input
            pooled = present.new_zeros(present.shape[0], 0)
        else:
            joined = query if query is not None else stacked.flatten(1, 2) if eager else torch.cat(filled, dim=1)
            pooled = self.global_average(joined)
        logits = self.route(pooled)
        if gates is None and all(slot is not None for slot in slots):
            weights = torch.softmax(logits, dim=1)  # every input present (the warm-up, a compact state): no mask
        else:
            weights = torch.softmax(logits.masked_fill(self._absent(slots, gates, logits), float("-inf")), dim=1)
        per_input = (-1,) + (1,) * (present.dim() - 1)
        if not eager:
            return sum(weights[:, i].reshape(per_input) * filled[i] for i in range(len(filled)))
        if present[0].numel() > self.BMM_ABOVE:
            return torch.bmm(weights.unsqueeze(1), stacked.flatten(2)).view(present.shape)
        return (weights.view(weights.shape + per_input[1:]) * stacked).sum(dim=1)

    def gated_forward(self, blocks: list, slot_gates: Tensor, query: Tensor | None = None) -> Tensor:
        """The same aggregation of K stacked states over ungated inputs, the gates applied here.
        `blocks[i]` is input i as `[K, B, ...]` (or `[1, B, ...]`, the same for every state; None:
        absent for all), `slot_gates` the `[K, k]` gate of each state on each input (0: absent from
        its softmax). Returns `[K·B, ...]`: `Σ_i w_i · (g_i · input_i)`, the query over the gated
        inputs, as `forward` of the gated inputs computes it. The callers' k full-size gating
        products become one (vectors, whose query is the gated inputs themselves) or none (images:
        the gates scale the pooled query and the softmax weights)."""
        if torch.compiler.is_compiling():
            return self.forward(*gated_slots(blocks, slot_gates), query)
        stacked = stack_blocks(blocks, slot_gates.shape[0])
        image = stacked.dim() > 4
        if not image:
            stacked = gate_stack(stacked, slot_gates)
        return self.weigh(stacked, slot_gates, query, gated=not image)

    def weigh(self, stacked: Tensor, slot_gates: Tensor, query: Tensor | None, *, gated: bool) -> Tensor:
        """`Σ_i w_i · g_i · input_i` of a `[K, B, k, ...]` stack of K states' inputs, the gates already
        applied to it (`gated`) or not (then they scale the pooled query and the weights)."""
        states, batch, count = stacked.shape[:3]
        per_state = slot_gates.view(states, 1, count)  # broadcast over a state's samples: [K, 1, k]
        image = stacked.dim() > 4
        if self.config["query_width"] == 0:
            pooled = stacked.new_zeros(states * batch, 0)
        elif query is not None:
            pooled = self.global_average(query)
        elif image:  # pooling is linear: the gates may scale the pooled inputs
            flat = stacked.flatten(4)
            scale = (1.0 / flat.shape[4]) * (1.0 if gated else per_state.unsqueeze(-1))
            pooled = (flat.sum(dim=4) * scale).flatten(2)
        else:
            pooled = stacked.flatten(2)
        logits = self.route(pooled.reshape(states * batch, -1)).view(states, batch, count)
        with torch.no_grad():
            absent = slot_gates == 0
            absent &= ~absent.all(dim=1, keepdim=True)  # nothing present: no mask, and the inputs are zeros
        weights = torch.softmax(logits.masked_fill(absent.unsqueeze(1), float("-inf")), dim=2)
        weights = (weights if gated else weights * per_state).view(states * batch, count)
        inputs = stacked.flatten(0, 1)  # [K·B, k, ...]
        if image or inputs[0, 0].numel() > self.BMM_ABOVE:
            return torch.bmm(weights.unsqueeze(1), inputs.flatten(2)).view((states * batch,) + inputs.shape[2:])
        return (weights.unsqueeze(-1) * inputs).sum(dim=1)

    @staticmethod
    def global_average(value: Tensor) -> Tensor:
        """`[B, C, ...]` averaged over its positions to `[B, C]`: a sum, then the scale on the small result
        (`mean`'s backward writes a full-size tensor, a sum's is a broadcast view of the gradient)."""
        if value.dim() <= 2:
            return value
        flat = value.flatten(2)
        return flat.sum(dim=2) * (1.0 / flat.shape[2])

    @staticmethod
    def _absent(slots: list, gates: list | None, logits: Tensor) -> Tensor:
        """Per row of `logits` and input, whether the input is absent: an empty slot, or a gate of 0."""
        with torch.no_grad():
            constants = logits.new_tensor([0.0, 1.0])  # an empty slot's gate, an ungated slot's
            per_slot = [constants[:1] if slot is None
                        else constants[1:] if gates is None or gates[i] is None
                        else torch.as_tensor(gates[i], device=logits.device).reshape(-1)
                        for i, slot in enumerate(slots)]
            states = max(gate.numel() for gate in per_slot)
            table = torch.stack([gate.expand(states) for gate in per_slot], dim=1)  # [states, k]
            absent = (table == 0).repeat_interleave(logits.shape[0] // states, dim=0)
            return absent & ~absent.all(dim=1, keepdim=True)  # nothing present: no mask, and the inputs are zeros


class MixAggregation(nn.Module):
    """Both aggregations over the same inputs, weighed by a learned weight m of the node:
    `σ(m) · nddr(inputs) + (1 − σ(m)) · gate(inputs)`. m starts at 0 (the two halves alike) and
    trains with the network's weights. The `nddr` half fills an empty slot with zeros, the `gate`
    half leaves it (and any input gated 0) out of its softmax, as each does alone."""

    def __init__(self, inputs: int, width: int, image: bool, query_width: int | None = None,
                 norm: str = "batch") -> None:
        super().__init__()
        self.config = dict(inputs=inputs, width=width, image=image, query_width=query_width, norm=norm)
        self.nddr = NddrAggregation(inputs, width, image, norm=norm)
        self.gate = GateAggregation(inputs, width, query_width)
        self.mix = nn.Parameter(torch.zeros(()))

    def forward(self, slots: list, gates: list | None = None, query: Tensor | None = None) -> Tensor:
        weight = torch.sigmoid(self.mix)
        return weight * self.nddr(slots) + (1 - weight) * self.gate(slots, gates, query)

    def gated_forward(self, blocks: list, slot_gates: Tensor, query: Tensor | None = None) -> Tensor:
        """`forward` of K stacked states' ungated inputs and their `[K, k]` gates (as
        `GateAggregation.gated_forward`): the inputs gated in one product, which both halves read."""
        if torch.compiler.is_compiling():
            return self.forward(*gated_slots(blocks, slot_gates), query)
        stacked = gate_stack(stack_blocks(blocks, slot_gates.shape[0]), slot_gates)
        weight = torch.sigmoid(self.mix)
        joined = stacked.flatten(0, 1).flatten(1, 2)  # [K·B, k·C, ...]: the concatenation of the gated inputs
        return weight * self.nddr.mixed(joined) + (1 - weight) * self.gate.weigh(stacked, slot_gates, query, gated=True)
