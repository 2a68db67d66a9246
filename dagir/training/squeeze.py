"""The squeeze loss (DESIGN §4): push every gate to 0 or 1, and remove what no task needs.

`L_sq = λ · [ mean s_t·b(a) + ρ · mean s_t·c_e·a ]` over all gates `a` of all tasks t (s_t: the
task's `squeeze` strength, 1 by default), where the
binarising term `b` is `4a(1-a)` (`binary`) or the binary entropy (`entropy`, MTL-NAS's minimum
entropy), and the compactness weights `c_e` are 1, or `1 - φ_e/Φ` for the `flow` variant (edges
that carry little of their task's flow are squeezed hardest), or the edge's multiply-accumulates over the
mean of every gated edge's for the `cost` variant (costly edges are squeezed hardest: at ρ = 1 an edge's
tipping point is 1/2 + c_e/8, so an edge of 4x the mean cost closes unless its task's loss holds it
open, one of a tenth stays open). `none` switches the loss off.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..compact_cost import edge_macs
from ..ir import IR

SQUEEZE_KINDS = ("binary", "entropy", "flow", "cost", "none")


def squeeze_loss(gates: torch.Tensor, *, kind: str, weight: float, rho: float,
                 compactness_weights: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """The squeeze loss of the gate values `gates` (any shape, values in (0, 1)).

    `compactness_weights` (same shape, detached) are required for `kind="flow"` and `"cost"`; `scale` (same
    shape), if given, multiplies each gate's terms (a task's own squeeze strength).

    >>> float(squeeze_loss(torch.tensor([0.0, 1.0]), kind="binary", weight=1.0, rho=0.0))
    0.0
    >>> float(squeeze_loss(torch.tensor([0.5]), kind="binary", weight=2.0, rho=0.0))
    2.0
    """
    if kind == "none" or weight == 0 or gates.numel() == 0:
        return gates.new_zeros(())
    if kind == "entropy":
        clamped = gates.clamp(1e-6, 1 - 1e-6)
        binarising = -(clamped * clamped.log() + (1 - clamped) * (1 - clamped).log())
    elif kind in ("binary", "flow", "cost"):
        binarising = 4 * gates * (1 - gates)
    else:
        raise ValueError(f"unknown squeeze kind {kind!r} (known: {', '.join(SQUEEZE_KINDS)})")
    per_gate = gates
    if kind in ("flow", "cost"):
        if compactness_weights is None:
            raise ValueError(f"the {kind} squeeze needs compactness weights (1 - φ_e/Φ, or c_e)")
        per_gate = compactness_weights.detach() * gates
    if scale is not None:
        binarising, per_gate = scale * binarising, scale * per_gate
    return weight * (binarising.mean() + rho * per_gate.mean())


def cost_compactness(ir: IR, slots: Mapping[tuple[str, str], int], count: int) -> torch.Tensor:
    """The `cost` squeeze's c_e for each of `count` gate slots (`slots`: (edge name, task) -> slot):
    its edge op's multiply-accumulates per sample over the mean of every slot's; all ones where no
    gated edge costs any."""
    edges = {edge.name: edge for edge in ir.edges.values()}
    macs = torch.zeros(count, dtype=torch.float64)
    for (edge, _task), slot in slots.items():
        macs[slot] = edge_macs(ir, edges[edge])
    mean = macs.mean()
    return macs / mean if mean > 0 else torch.ones_like(macs)
