"""Lower a gated IR to the supernet: a `torch.fx.GraphModule` with readable generated code.

The graph computes DESIGN §4 literally. Per task t, a hidden node's state is
`h_j^t = Σ_{i→j active for t} g^t_ij · o_ij(h_i^t)` (or the node's `nddr` / `gate` aggregation of the
gated terms), and a head computes `head_op(Σ_j g^t_j · q^t_j(h_j^t))`. Edge ops are shared by all
tasks: one submodule per edge (`edge_h2_h4`), called once per distinct source state. Gates come from
one `GateTable` submodule (`gates`), whose mode and temperature are set at run time:

    module = lower_supernet(ir)
    module.gates.mode = "ones"        # warm-up: every gate 1
    module.gates.mode, module.gates.tau = "soft", 0.5
    outputs = module(x)               # {"depth": tensor, "segment": tensor}

States are numbered structurally while lowering: two tasks share a state (computed once) when they
reach the node through the same edges, from the same states, with the same gates — in practice the
ungated prefix (input, stem). In "ones" mode every task's state at a node is equal whenever the
tasks use the same edges, but the graph is fixed at lowering time, so those states are still
computed once per task; a warm-up lowering that computes them once is left for the task-batched
version.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Iterable, Literal

import torch
from torch import Tensor, fx, nn

from dagir.ir import IR, Edge, Node, edge_name

from .torch_ops import build_aggregation, build_op

GateMode = Literal["soft", "hard", "ones"]
GATE_MODES: tuple[str, ...] = ("soft", "hard", "ones")
GATE_GROUPS: dict[str, str] = {"internal": "A", "read_in": "B", "read_out": "Gamma", "cross": "cross",
                               "stem": "stem"}
MISSING_LOGIT = 0.0  # a gated edge without a logit (before attach-gates) starts neutral: σ(0) = 0.5


def node_op_module_name(node: Node) -> str:
    """Submodule name of a node's own op: `head_<task>` for heads, `op_<node>` otherwise."""
    return f"head_{node.task}" if node.kind == "head" else f"op_{node.name}"


def aggregation_module_name(node: Node) -> str:
    return f"node_{node.name}"


def gate_logit(edge: Edge, task: str) -> float:
    logit = edge.tasks[task].gate_logit
    return MISSING_LOGIT if logit is None else float(logit)


# -- gates ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateEntry:
    """One gate: the logit of `task` on edge `src -> dst`, at `position` within its `group`."""

    src: str
    dst: str
    task: str
    group: str
    position: int


class GateTable(nn.Module):
    """The upper-level gate logits (A, B, Γ and cross), one `nn.Parameter` vector per edge kind.

    `forward()` returns every gate value as one vector; `slots[(edge name, task)]` is a gate's index
    in it. Modes: `soft` σ(logit / τ), `hard` 1 where logit >= 0 else 0 (the discretisation at gate
    0.5), `ones` every gate 1 (warm-up). `mode` and `tau` are plain attributes.
    """

    def __init__(self, ir: IR, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.mode: GateMode = "soft"
        self.tau = 1.0
        values: dict[str, list[float]] = {}
        self.entries: list[GateEntry] = []
        for edge in ir.edges.values():
            if not edge.gated:
                continue
            group = GATE_GROUPS[edge.kind]
            for task in edge.active_tasks():
                column = values.setdefault(group, [])
                self.entries.append(GateEntry(edge.src, edge.dst, task, group, len(column)))
                column.append(gate_logit(edge, task))
        self.logits = nn.ParameterDict()
        for group in sorted(values, key=list(GATE_GROUPS.values()).index):
            self.logits[group] = nn.Parameter(torch.tensor(values[group], dtype=dtype))
        # Offsets follow the dict's own iteration order, the order `forward` concatenates in.
        offsets, start = {}, 0
        for group, parameter in self.logits.items():
            offsets[group], start = start, start + parameter.numel()
        self.slots: dict[tuple[str, str], int] = {
            (edge_name(e.src, e.dst), e.task): offsets[e.group] + e.position for e in self.entries}

    def forward(self) -> Tensor:
        if not self.logits:
            return torch.zeros(0)
        logits = torch.cat([self.logits[group] for group in self.logits])
        if self.mode == "soft":
            return torch.sigmoid(logits / self.tau)
        if self.mode == "hard":
            return (logits >= 0).to(logits.dtype)
        if self.mode == "ones":
            return torch.ones_like(logits)
        raise ValueError(f"unknown gate mode {self.mode!r} (known: {', '.join(GATE_MODES)})")

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, tau={self.tau}, gates={len(self.entries)}"


# -- planning: which states exist, and what each is made of ---------------------------------------
@dataclass(frozen=True)
class Contribution:
    """One incoming edge's term in a state: the edge, the state it reads, its gate slot (None: 1)."""

    edge: Edge
    source: int
    slot: int | None


@dataclass
class State:
    """A distinct value at a node, with the tasks holding it (several only when provably equal)."""

    node: Node
    tasks: list[str]
    contributions: tuple[Contribution, ...]
    suffix: str = ""  # "_<task>" when the node holds several states, so names stay unique

    @property
    def name(self) -> str:
        return "x" if self.node.kind == "input" else self.node.name + self.suffix


@dataclass
class Plan:
    states: list[State] = field(default_factory=list)
    state_of: dict[tuple[str, str], int] = field(default_factory=dict)


def plan_states(ir: IR, slots: dict[tuple[str, str], int]) -> Plan:
    """Number the states of every node per task, in topological order (state 0 is the input)."""
    plan = Plan()
    source = ir.input_node()
    plan.states.append(State(source, list(ir.task_names), ()))
    plan.state_of.update({(source.name, t): 0 for t in ir.task_names})
    incoming, known = ir.in_edges(), {}
    for name in ir.topological_order():
        node = ir.nodes[name]
        if node.kind == "input":
            continue
        for task in ir.task_names if node.task is None else [node.task]:
            terms = []
            for edge in incoming[name]:
                reads = plan.state_of.get((edge.src, ir.nodes[edge.src].task or task))
                if edge.is_active(task) and reads is not None:
                    terms.append(Contribution(edge, reads, slots[(edge.name, task)] if edge.gated else None))
            if not terms:
                continue  # no active edge reaches this node for the task: it holds no state for it
            key = (name, tuple((c.edge.name, c.source, c.slot) for c in terms))
            if key not in known:
                known[key] = len(plan.states)
                plan.states.append(State(node, [], tuple(terms)))
            plan.states[known[key]].tasks.append(task)
            plan.state_of[(name, task)] = known[key]
    per_node: dict[str, int] = {}
    for state in plan.states[1:]:
        per_node[state.node.name] = per_node.get(state.node.name, 0) + 1
    for state in plan.states[1:]:
        state.suffix = f"_{state.tasks[0]}" if per_node[state.node.name] > 1 else ""
    return plan


# -- lowering -------------------------------------------------------------------------------------
def lower_supernet(ir: IR, *, dtype: torch.dtype = torch.float32) -> fx.GraphModule:
    """The supernet of `ir`: `module(x) -> {task: output}`, with a `gates` GateTable submodule.

    Needs every edge to have an op (run `legalize-types` first). The module is built on the CPU in
    `dtype`; move it with `.to(device)`.
    """
    missing = [e.name for e in ir.edges.values() if e.op is None and e.active_tasks()]
    if missing:
        raise ValueError(f"edges without an op (run legalize-types first): {', '.join(missing)}")
    root = nn.Module()
    root.gates = GateTable(ir, dtype=dtype)
    plan = plan_states(ir, root.gates.slots)
    incoming = ir.in_edges()
    graph = fx.Graph()
    values: dict[int, fx.Node] = {0: graph.placeholder("x")}
    edge_outputs: dict[tuple[str, int], fx.Node] = {}
    gates = graph.call_module("gates", ()) if root.gates.entries else None
    slot_task = {slot: task for (_, task), slot in root.gates.slots.items()}

    def edge_output(edge: Edge, source: int, name: str | None) -> fx.Node:
        key = (edge.name, source)
        if key not in edge_outputs:
            if not hasattr(root, edge.name):
                root.add_module(edge.name, build_op(edge.op))
            edge_outputs[key] = graph.create_node("call_module", edge.name, (values[source],),
                                                  name=name or edge.name + plan.states[source].suffix)
        return edge_outputs[key]

    for index, state in enumerate(plan.states[1:], start=1):
        node = state.node
        # A state that is one ungated edge's output (the stem) is named after the state itself.
        is_edge_output = (len(state.contributions) == 1 and state.contributions[0].slot is None
                          and node.aggregation == "sum" and node.op is None)
        terms = []
        for term in state.contributions:
            output = edge_output(term.edge, term.source, state.name if is_edge_output else None)
            if term.slot is not None:
                suffix = f"{term.edge.name}_{slot_task[term.slot]}"
                gate = graph.create_node("call_function", operator.getitem, (gates, term.slot),
                                         name=f"gate_{suffix}")
                output = graph.create_node("call_function", operator.mul, (output, gate),
                                           name=f"gated_{suffix}")
            terms.append((term.edge.name, output))
        aggregate_name = state.name + "_in" if node.op is not None else state.name
        if node.aggregation == "sum":
            value = terms[0][1]
            for position, (_, output) in enumerate(terms[1:], start=2):
                value = graph.create_node("call_function", operator.add, (value, output),
                                          name=aggregate_name if position == len(terms) else None)
        else:
            module_name = aggregation_module_name(node)
            if not hasattr(root, module_name):
                root.add_module(module_name, build_aggregation(node.aggregation, len(incoming[node.name]),
                                                               node.input_type))
            by_edge = dict(terms)
            slots_in = [by_edge.get(edge.name) for edge in incoming[node.name]]
            value = graph.create_node("call_module", module_name, (slots_in,), name=aggregate_name)
        if node.op is not None:
            module_name = node_op_module_name(node)
            if not hasattr(root, module_name):
                root.add_module(module_name, build_op(node.op))
            value = graph.create_node("call_module", module_name, (value,), name=state.name)
        values[index] = value

    outputs = {}
    for task in ir.task_names:
        head = ir.head_of(task).name
        if (head, task) not in plan.state_of:
            raise ValueError(f"task {task!r} has no path to its head on edges active for it")
        outputs[task] = values[plan.state_of[(head, task)]]
    graph.output(outputs)
    root.to(dtype)
    module = fx.GraphModule(root, graph, class_name="Supernet")
    module.graph.eliminate_dead_code()  # states no head reads (off every kept path) are not computed
    module.delete_all_unused_submodules()
    module.gates = root.gates  # kept even when no edge is gated, so the helpers below always work
    module.graph.lint()
    module.recompile()
    return module


# -- gates back into the IR, parameter groups -----------------------------------------------------
def import_gates_from_module(module: nn.Module, ir: IR) -> IR:
    """A new IR whose edge states carry the module's trained gate logits; `ir` is left unchanged."""
    table: GateTable = module.gates
    out = ir.copy()
    values = {group: parameter.detach().cpu().tolist() for group, parameter in table.logits.items()}
    for entry in table.entries:
        edge = out.edges.get((entry.src, entry.dst))
        if edge is None or entry.task not in edge.tasks:
            raise ValueError(f"the module's gate for edge {entry.src} -> {entry.dst}, task {entry.task!r}, "
                             "has no edge state in this IR: was the module lowered from another IR?")
        out.edges[(entry.src, entry.dst)] = edge.with_task_state(
            entry.task, gate_logit=float(values[entry.group][entry.position]))
    return out


def _children_parameters(module: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Parameter]:
    return [p for name, child in module.named_children() if name.startswith(prefixes)
            for p in child.parameters()]


def gate_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The upper-level parameters A, B, Γ (and cross): what the search stage trains."""
    return list(module.gates.parameters())


def weight_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Θ: the edge ops, the node aggregations and any non-head node op."""
    return _children_parameters(module, ("edge_", "node_", "op_"))


def head_parameters(module: nn.Module) -> list[nn.Parameter]:
    return _children_parameters(module, ("head_",))


def count_parameters(module: nn.Module | Iterable[nn.Parameter]) -> int:
    """Number of scalars in a module's parameters (or in a list of parameters), each counted once."""
    parameters = module.parameters() if isinstance(module, nn.Module) else module
    unique = {id(p): p for p in parameters}
    return sum(p.numel() for p in unique.values())
