"""The supernet's architecture parameters: every decision's logits, and the gate of every
(edge, task) they give (DESIGN §9).

`GateTable.forward()` returns one vector with a value per gate slot; `slots[(edge name, task)]`
is a slot's index in it, and the lowered graph multiplies each edge's output by its slot. A
bernoulli decision's slot is its value; a categorical decision's edge gets the summed weight of
the options that turn it on. The numbers come from `dagir.gates`.

Modes (`mode`, a plain attribute, with `tau` and `relaxation`):
- `soft`: every bernoulli under `relaxation` (`sigmoid`, the default, or `relaxed-bernoulli`, or
  `sample`) at temperature τ; every categorical the softmax at τ (a one-hot sample under `sample`);
  in eval mode (`module.eval()`) noise and samples give way to the probabilities (σ, softmax);
- `hard`: the discretisation at gate 0.5 (logit >= 0; the argmax option);
- `ones`: every gate 1 (warm-up);
- `fixed`: the option values last given to `fix` (a drawn sample, as REINFORCE trains on); an edge
  on several open routes gets gate 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dagir import gates as gate_math
from dagir.ir import IR, SHARED, Decision, edge_name

GateMode = Literal["soft", "hard", "ones", "fixed"]
GATE_MODES: tuple[str, ...] = ("soft", "hard", "ones", "fixed")
# bernoulli logits are grouped by the kind of edge they govern: the paper's A, B and Γ
BERNOULLI_GROUPS: dict[str, str] = {"internal": "A", "read_in": "B", "read_out": "Gamma", "cross": "cross",
                                    "stem": "stem"}


@dataclass(frozen=True)
class GateEntry:
    """One gate slot: `task`'s gate on edge `src -> dst`, read from logit `position` of `group`
    (a bernoulli group, or a categorical decision's name, whose logits are `[rows, K]`)."""

    src: str
    dst: str
    task: str
    group: str
    position: int


def _categorical_key(decision: Decision) -> str:
    return "choice_" + decision.name


class GateTable(nn.Module):
    """Every decision's logits as parameters (`logits[group]`), and the gate slots they drive."""

    def __init__(self, ir: IR, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.mode: GateMode = "soft"
        self.tau = 1.0
        self.relaxation = "sigmoid"
        self.generator: torch.Generator | None = None
        self.fixed: Tensor | None = None
        bernoulli: dict[str, list[float]] = {}
        bernoulli_owners: dict[str, list[tuple[str, str]]] = {}  # (decision, owner) of each logit
        rows: dict[str, list[str]] = {}  # a categorical's logit rows: its tasks, or SHARED
        self.entries: list[GateEntry] = []
        self.decisions: list[Decision] = []
        for decision in ir.decisions.values():
            owners = [SHARED] if decision.scope == "shared" else list(decision.tasks)
            if decision.kind == "bernoulli":
                (key,), = decision.options
                group = BERNOULLI_GROUPS[ir.edges[key].kind]
                column = bernoulli.setdefault(group, [])
                position = {owner: len(column) + i for i, owner in enumerate(owners)}
                column.extend(decision.logits[owner][0] for owner in owners)
                bernoulli_owners.setdefault(group, []).extend((decision.name, owner) for owner in owners)
                for task in decision.tasks:
                    self.entries.append(GateEntry(key[0], key[1], task, group,
                                                  position[SHARED if decision.scope == "shared" else task]))
            else:
                self.decisions.append(decision)
                rows[decision.name] = owners
        self.logits = nn.ParameterDict()
        for group in sorted(bernoulli, key=list(BERNOULLI_GROUPS.values()).index):
            self.logits[group] = nn.Parameter(torch.tensor(bernoulli[group], dtype=dtype))
        self.bernoulli_groups = list(self.logits)
        self.rows = rows
        for decision in self.decisions:
            self.logits[_categorical_key(decision)] = nn.Parameter(
                torch.tensor([decision.logits[owner] for owner in rows[decision.name]], dtype=dtype))
        # option values: the bernoulli groups' values, then each categorical's [rows, K], flattened
        offsets, start = {}, 0
        for group, parameter in self.logits.items():
            offsets[group], start = start, start + parameter.numel()
        self.values_size = start
        self.value_names: list[tuple[str, str, int]] = []  # (decision, owner, option) of each option value
        for group in self.logits:
            if group in bernoulli_owners:
                self.value_names.extend((name, owner, 0) for name, owner in bernoulli_owners[group])
        for decision in self.decisions:
            self.value_names.extend((decision.name, owner, k) for owner in rows[decision.name]
                                    for k in range(len(decision.options)))
        pairs: list[tuple[int, int]] = []  # (slot, option value) pairs summed into each slot
        slots: dict[tuple[str, str], int] = {}
        group_order = list(self.logits)
        self.entries.sort(key=lambda entry: (group_order.index(entry.group), entry.position))
        for entry in self.entries:  # in value order: per-task bernoullis' slots are their values
            slots[(edge_name(entry.src, entry.dst), entry.task)] = len(slots)
            pairs.append((len(slots) - 1, offsets[entry.group] + entry.position))
        for decision in self.decisions:
            group, width = _categorical_key(decision), len(decision.options)
            for key in decision.edges():
                for task in decision.tasks:
                    slot = slots.setdefault((edge_name(*key), task), len(slots))
                    if slot == len(self.entries):
                        self.entries.append(GateEntry(key[0], key[1], task, group, -1))
                    row = rows[decision.name].index(SHARED if decision.scope == "shared" else task)
                    pairs.extend((slot, offsets[group] + row * width + k) for k in decision.options_with(key))
        self.slots = slots
        self.slot_tasks = [task for (_, task) in sorted(slots, key=slots.__getitem__)]  # the task of each slot
        self.value_owners = [owner for (_, owner, _) in self.value_names]  # a task, or SHARED, per option value
        slot_index = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        value_index = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        one_each = sorted(p[0] for p in pairs) == list(range(len(slots)))
        self.gather_only = one_each and slot_index.tolist() == list(range(len(slots)))
        self.register_buffer("slot_index", slot_index, persistent=False)
        self.register_buffer("value_index", value_index, persistent=False)
        self.identity = self.gather_only and value_index.tolist() == list(range(len(slots)))

    # -- option values ------------------------------------------------------------------------
    def option_values(self, mode: str | None = None) -> Tensor:
        """Every decision's option values in `mode` (default: the table's), as one vector."""
        mode = self.mode if mode is None else mode
        if mode == "fixed":
            if self.fixed is None:
                raise ValueError("gate mode 'fixed' needs option values: call fix() first")
            return self.fixed
        parts = []
        # noise and samples are for training; evaluating a relaxed supernet takes the probabilities
        relaxation = self.relaxation if self.training else "sigmoid"
        if self.bernoulli_groups:  # one call over every bernoulli logit (as one vector)
            logits = torch.cat([self.logits[group] for group in self.bernoulli_groups])
            if mode == "soft":
                parts.append(gate_math.relax_bernoulli(logits, relaxation=relaxation, tau=self.tau,
                                                       generator=self.generator))
            elif mode == "hard":
                parts.append(gate_math.hard_bernoulli(logits))
            elif mode == "ones":
                parts.append(torch.ones_like(logits))
            else:
                raise ValueError(f"unknown gate mode {mode!r} (known: {', '.join(GATE_MODES)})")
        elif mode not in GATE_MODES:
            raise ValueError(f"unknown gate mode {mode!r} (known: {', '.join(GATE_MODES)})")
        for decision in self.decisions:
            logits = self.logits[_categorical_key(decision)]
            if mode == "soft":
                values = gate_math.relax_categorical(logits, relaxation="sample" if relaxation == "sample" else "softmax",
                                                     tau=self.tau, generator=self.generator)
            elif mode == "hard":
                values = gate_math.hard_categorical(logits)
            else:  # ones: every route open
                values = torch.ones_like(logits)
            parts.append(values.flatten())
        if not parts:
            return torch.zeros(0)
        return torch.cat(parts)

    def sample(self) -> Tensor:
        """One hard sample of every decision (with `generator`), as option values."""
        saved, self.relaxation, training = self.relaxation, "sample", self.training
        self.train()
        try:
            return self.option_values("soft").detach()
        finally:
            self.relaxation = saved
            self.train(training)

    def dropped(self, rate: float, generator: torch.Generator | None = None) -> Tensor:
        """Option values that turn each bernoulli gate off with probability `rate` (drawn with
        `generator`) and leave every categorical route open: a warm-up step's sub-network. In
        `fixed` mode a route edge gets gate 1 (not the number of open routes it lies on)."""
        values = torch.ones(self.values_size)
        count = sum(self.logits[group].numel() for group in self.bernoulli_groups)
        values[:count] = (torch.rand(count, generator=generator) >= rate).to(values.dtype)
        first = next(iter(self.logits.values()), None)
        return values if first is None else values.to(device=first.device, dtype=first.dtype)

    def fix(self, values: Tensor) -> None:
        """Use `values` (from `sample`, or any option values) in `fixed` mode."""
        if values.numel() != self.values_size:
            raise ValueError(f"expected {self.values_size} option values, got {values.numel()}")
        self.fixed = values.detach()

    def values_by_decision(self, values: Tensor) -> dict[str, dict[str, list[float]]]:
        """Option values as {decision: {owner: [value per option]}} (the reference evaluator's `fixed`)."""
        out: dict[str, dict[str, list[float]]] = {}
        for (name, owner, option), value in zip(self.value_names, values.tolist()):
            row = out.setdefault(name, {}).setdefault(owner, [])
            row.append(value)
            assert len(row) == option + 1
        return out

    def log_prob(self, values: Tensor) -> Tensor:
        """log p(values) of a hard sample under the current logits (temperature 1), summed over
        every decision: what REINFORCE differentiates."""
        first = next(iter(self.logits.values()), None)
        total = torch.zeros(()) if first is None else first.new_zeros(())
        start = 0
        for group, parameter in self.logits.items():
            part = values[start:start + parameter.numel()].view_as(parameter)
            start += parameter.numel()
            if group in self.bernoulli_groups:
                total = total + gate_math.bernoulli_log_prob(parameter, part).sum()
            else:
                total = total + gate_math.categorical_log_prob(parameter, part).sum()
        return total

    def probabilities(self) -> Tensor:
        """Every bernoulli's σ(logit / τ) and every categorical's softmax at τ, as one vector (the
        squeeze and entropy regularisers' input)."""
        parts = [gate_math.relax_bernoulli(self.logits[g], relaxation="sigmoid", tau=self.tau)
                 for g in self.bernoulli_groups]
        parts += [gate_math.relax_categorical(self.logits[_categorical_key(d)], relaxation="softmax",
                                              tau=self.tau).flatten() for d in self.decisions]
        return torch.cat(parts) if parts else torch.zeros(0)

    # -- gate slots ---------------------------------------------------------------------------
    def forward(self) -> Tensor:
        if not self.slots:
            return torch.zeros(0)
        if self.mode == "ones":  # every gate 1: summing the open routes would count an edge once per route
            return self.slot_index.new_ones(len(self.slots), dtype=self._dtype())
        values = self.slot_values(self.option_values())
        # fixed option values may open several routes of one decision (`dropped` opens them all): an
        # edge on several open routes is on, gate 1; a sample or a bernoulli never sums above 1
        return values.clamp(max=1.0) if self.mode == "fixed" and not self.gather_only else values

    def _dtype(self) -> torch.dtype:
        first = next(iter(self.logits.values()), None)
        return torch.get_default_dtype() if first is None else first.dtype

    def slot_values(self, values: Tensor) -> Tensor:
        """The gate of every slot from option values (a categorical's edge: the sum of its options')."""
        if self.identity:
            return values
        if self.gather_only:
            return values[self.value_index]
        return values.new_zeros(len(self.slots)).index_add(0, self.slot_index, values[self.value_index])

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, tau={self.tau}, relaxation={self.relaxation!r}, gates={len(self.slots)}"


def import_logits(table: GateTable, ir: IR) -> IR:
    """A new IR whose decisions carry the table's trained logits; `ir` is left unchanged."""
    out = ir.copy()
    values = {group: parameter.detach().cpu() for group, parameter in table.logits.items()}
    for entry in table.entries:
        if entry.position < 0:
            continue
        key = (entry.src, entry.dst)
        decision = out.decisions.get(edge_name(*key))
        if decision is None or entry.task not in decision.tasks:
            raise ValueError(f"the module's gate for edge {entry.src} -> {entry.dst}, task {entry.task!r}, "
                             "has no decision in this IR: was the module lowered from another IR?")
        owner = SHARED if decision.scope == "shared" else entry.task
        logits = dict(decision.logits)
        logits[owner] = (float(values[entry.group][entry.position]),)
        out.decisions[decision.name] = decision.with_logits(logits)
    for decision in table.decisions:
        if decision.name not in out.decisions:
            raise ValueError(f"the module's decision {decision.name!r} is not in this IR")
        rows = values[_categorical_key(decision)].tolist()
        out.decisions[decision.name] = out.decisions[decision.name].with_logits(
            dict(zip(table.rows[decision.name], rows)))
    return out
