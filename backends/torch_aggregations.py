"""The modules a node uses to combine its incoming edges (`nddr`, `gate`; `sum` needs none),
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


class NddrAggregation(nn.Module):
    """MTL-NAS's NDDR fusion: concatenate the inputs along channels (zeros in an empty slot: an
    absent edge is one whose gate is 0), then 1x1 conv (a linear layer for vectors), batch norm,
    ReLU back to the node's width. `fusion` = (w_t, w_s) starts the 1x1 conv as w_t times the
    identity on the slots `own` marks (shared among them) and w_s / k on each of the k others;
    None keeps torch's random initialisation."""

    def __init__(self, inputs: int, width: int, image: bool, own: list | None = None,
                 fusion: tuple | None = None) -> None:
        super().__init__()
        self.config = dict(inputs=inputs, width=width, image=image)
        if image:
            self.fuse = nn.Conv2d(inputs * width, width, 1, bias=False)
            self.bn = nn.BatchNorm2d(width)
        else:
            self.fuse = nn.Linear(inputs * width, width, bias=False)
            self.bn = nn.BatchNorm1d(width)
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
        present = next(s for s in slots if s is not None)
        filled = [torch.zeros_like(present) if s is None else s for s in slots]
        return self.relu(self.bn(self.fuse(torch.cat(filled, dim=1))))


class GateAggregation(nn.Module):
    """Input-dependent soft sharing (MTNAS, MMoE): a linear layer on the globally pooled
    concatenation of the inputs (zeros in an empty slot) gives `logits` routing logits, a softmax
    over them weights the inputs, input i by the one at `positions[i]`: `Σ_i w_i · input_i`. By
    default one logit per input. With `mask_empty` (the supernet: an empty slot is an edge the
    task does not have) an empty slot's logit is masked out of the softmax; without (the compact
    network: an empty slot is an edge gated to 0, still a zero input in the searched network) it
    keeps its share, as does a logit no slot uses."""

    def __init__(self, inputs: int, width: int, logits: int | None = None, positions: list | None = None,
                 mask_empty: bool = True) -> None:
        super().__init__()
        logits = inputs if logits is None else logits
        positions = list(range(inputs)) if positions is None else list(positions)
        self.config = dict(inputs=inputs, width=width, logits=logits, positions=positions, mask_empty=mask_empty)
        self.positions, self.mask_empty = positions, mask_empty
        self.route = nn.Linear(inputs * width, logits)

    def forward(self, slots: list) -> Tensor:
        present = next(s for s in slots if s is not None)
        filled = [torch.zeros_like(present) if s is None else s for s in slots]
        joined = torch.cat(filled, dim=1)
        pooled = joined.flatten(2).mean(dim=2) if joined.dim() > 2 else joined
        logits = self.route(pooled)
        absent = [self.positions[i] for i, s in enumerate(slots) if s is None] if self.mask_empty else []
        if absent:
            mask = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            mask[absent] = True
            logits = logits.masked_fill(mask, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        shape = (-1,) + (1,) * (joined.dim() - 1)
        return sum(weights[:, p].reshape(shape) * filled[i] for i, p in enumerate(self.positions))
