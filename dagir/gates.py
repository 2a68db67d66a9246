"""The numbers of search decisions, in one place: gate values, relaxations, samples,
log-probabilities and discretisation (DESIGN §9).

A `bernoulli` decision has one logit l: the edge is on with probability σ(l). A `categorical`
decision has K logits: option k is chosen with probability softmax(l)_k. Everything in dagir that
turns a logit into a number (the lowerings, the squeeze loss, flow, discretisation, drawings, text
dumps, plots) asks this module, so there is one sigmoid and it is safe at any logit.

Relaxations, what the supernet computes while searching:
- `sigmoid`: σ(l / τ) (the paper's gates; MTL-NAS's architecture step);
- `relaxed-bernoulli`: σ((l + log u - log(1 - u)) / τ) with u ~ U(0, 1), a Gumbel-sigmoid sample
  (MTL-NAS's weight step);
- `softmax`: softmax(l / τ) over a categorical decision's options (for a bernoulli it is σ(l / τ):
  the softmax of the two options off and on with logits 0 and l);
- `sample`: a hard 0/1 (one-hot) sample drawn with the decision's probabilities (REINFORCE).

>>> sigmoid(-800.0), sigmoid(800.0), round(sigmoid(0.0), 3)
(0.0, 1.0, 0.5)
>>> round(log_sigmoid(-800.0), 1)
-800.0
>>> [round(p, 3) for p in softmax([0.0, 0.0, 1000.0])]
[0.0, 0.0, 1.0]
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

BERNOULLI_RELAXATIONS: tuple[str, ...] = ("sigmoid", "relaxed-bernoulli", "softmax", "sample")
CATEGORICAL_RELAXATIONS: tuple[str, ...] = ("softmax", "sample")
if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from .ir import Decision, EdgeKey

NOISE_EPSILON = 1e-6  # u is drawn from [ε, 1 - ε], so the logistic noise stays finite


# -- plain floats (passes, flow, drawings: no torch needed) ---------------------------------------
def sigmoid(logit: float) -> float:
    """σ(logit), never overflowing: exp is only taken of a non-positive number."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


def log_sigmoid(logit: float) -> float:
    """log σ(logit) = -log(1 + e^-logit), exact for very negative logits (no log of 0)."""
    if logit >= 0:
        return -math.log1p(math.exp(-logit))
    return logit - math.log1p(math.exp(logit))


def softmax(logits: Sequence[float]) -> list[float]:
    """The softmax of `logits`, shifted by their maximum so no exp overflows."""
    top = max(logits)
    weights = [math.exp(value - top) for value in logits]
    total = math.fsum(weights)
    return [w / total for w in weights]


def argmax(logits: Sequence[float]) -> int:
    """The index of the largest logit; ties go to the first (a stable, reproducible choice)."""
    best = 0
    for index, value in enumerate(logits):
        if value > logits[best]:
            best = index
    return best


def probabilities(kind: str, logits: Sequence[float], tau: float = 1.0) -> list[float]:
    """A decision's option probabilities at temperature τ: `[σ(l/τ)]` for a bernoulli (the
    probability that its edge is on), the softmax of `l/τ` for a categorical."""
    scaled = [value / tau for value in logits]
    return [sigmoid(scaled[0])] if kind == "bernoulli" else softmax(scaled)


def hard_values(kind: str, logits: Sequence[float]) -> list[float]:
    """The discretised option values at the default threshold: `[1.0]` or `[0.0]` for a bernoulli
    (on iff logit >= 0, i.e. σ >= 0.5), a one-hot of the argmax for a categorical."""
    if kind == "bernoulli":
        return [1.0 if logits[0] >= 0 else 0.0]
    chosen = argmax(logits)
    return [1.0 if k == chosen else 0.0 for k in range(len(logits))]


def edge_gate(decision: "Decision | None", key: "EdgeKey", task: str, tau: float = 1.0) -> float | None:
    """The probability `decision` gives edge `key` of being on for `task` (σ(l/τ) for a bernoulli,
    the summed softmax of the options with the edge for a categorical); None where no decision
    decides the edge for the task (it then always passes)."""
    if decision is None or task not in decision.tasks:
        return None
    return decision.edge_probability(key, task, tau)


# -- tensors (the supernet's gate table, the strategies; torch is imported here only, so the
#    passes and flow, which use the float functions above, stay free of it) ---------------------
def logistic_noise(shape: torch.Size | tuple[int, ...], *, like: Tensor,
                   generator: torch.Generator | None = None) -> Tensor:
    """log u - log(1 - u) for u ~ U(ε, 1 - ε): the noise of a relaxed-bernoulli sample."""
    import torch

    u = torch.rand(shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device)
    u = u.clamp(NOISE_EPSILON, 1 - NOISE_EPSILON)
    return torch.log(u) - torch.log1p(-u)


def relax_bernoulli(logits: Tensor, *, relaxation: str, tau: float = 1.0,
                    generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """Gate values of bernoulli logits under `relaxation` (see the module docstring).

    `noise` fixes the logistic noise of `relaxed-bernoulli` (default: drawn with `generator`).
    `sample` draws hard 0/1 values and carries no gradient (REINFORCE uses `bernoulli_log_prob`).
    """
    import torch

    if relaxation in ("sigmoid", "softmax"):
        return torch.sigmoid(logits / tau)
    if relaxation == "relaxed-bernoulli":
        noise = logistic_noise(logits.shape, like=logits, generator=generator) if noise is None else noise
        return torch.sigmoid((logits + noise) / tau)
    if relaxation == "sample":
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device="cpu").to(logits.device)
        return (u < torch.sigmoid(logits.detach())).to(logits.dtype)
    raise ValueError(f"unknown relaxation {relaxation!r} for a bernoulli decision "
                     f"(known: {', '.join(BERNOULLI_RELAXATIONS)})")


def relax_categorical(logits: Tensor, *, relaxation: str, tau: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """Option weights of categorical logits `[..., K]`: the softmax at τ, or a one-hot sample."""
    import torch

    if relaxation in ("softmax", "sigmoid", "relaxed-bernoulli"):
        # a categorical has no independent gates: every continuous relaxation is its softmax
        return torch.softmax(logits / tau, dim=-1)
    if relaxation == "sample":
        flat = torch.softmax(logits.detach().reshape(-1, logits.shape[-1]), dim=-1).cpu()
        drawn = torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1])
        return torch.nn.functional.one_hot(drawn, logits.shape[-1]).to(logits.dtype).to(logits.device)
    raise ValueError(f"unknown relaxation {relaxation!r} for a categorical decision "
                     f"(known: {', '.join(CATEGORICAL_RELAXATIONS)})")


def hard_bernoulli(logits: Tensor) -> Tensor:
    """1 where logit >= 0 (σ >= 0.5), else 0."""
    return (logits >= 0).to(logits.dtype)


def hard_categorical(logits: Tensor) -> Tensor:
    """A one-hot of each row's argmax (the first of equal maxima, as `argmax` above)."""
    import torch

    chosen = torch.argmax(logits, dim=-1)
    return torch.nn.functional.one_hot(chosen, logits.shape[-1]).to(logits.dtype)


def bernoulli_log_prob(logits: Tensor, values: Tensor) -> Tensor:
    """log p(values) of 0/1 samples under σ(logits), elementwise; safe at any logit."""
    import torch

    return values * torch.nn.functional.logsigmoid(logits) + (1 - values) * torch.nn.functional.logsigmoid(-logits)


def categorical_log_prob(logits: Tensor, one_hot: Tensor) -> Tensor:
    """log p(option) of one-hot samples `[..., K]` under softmax(logits)."""
    import torch

    return (one_hot * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
