"""The squeeze loss (DESIGN §4): push every gate to 0 or 1, and remove what no task needs.

`L_sq = λ · [ mean s_t·b(a) + ρ · mean s_t·c_e·a ]` over all gates `a` of all tasks t (s_t: the
task's `squeeze` strength, 1 by default), where the
binarising term `b` is `4a(1-a)` (`binary`) or the binary entropy (`entropy`, MTL-NAS's minimum
entropy), and the compactness weights `c_e` are 1, or `1 - φ_e/Φ` for the `flow` variant (edges
that carry little of their task's flow are squeezed hardest). `none` switches the loss off.
"""
from __future__ import annotations

import torch

SQUEEZE_KINDS = ("binary", "entropy", "flow", "none")


def squeeze_loss(gates: torch.Tensor, *, kind: str, weight: float, rho: float,
                 compactness_weights: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """The squeeze loss of the gate values `gates` (any shape, values in (0, 1)).

    `compactness_weights` (same shape, detached) are required for `kind="flow"`; `scale` (same
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
    elif kind in ("binary", "flow"):
        binarising = 4 * gates * (1 - gates)
    else:
        raise ValueError(f"unknown squeeze kind {kind!r} (known: {', '.join(SQUEEZE_KINDS)})")
    per_gate = gates
    if kind == "flow":
        if compactness_weights is None:
            raise ValueError("the flow squeeze needs compactness weights 1 - φ_e/Φ")
        per_gate = compactness_weights.detach() * gates
    if scale is not None:
        binarising, per_gate = scale * binarising, scale * per_gate
    return weight * (binarising.mean() + rho * per_gate.mean())
