"""The typed graph IR: nodes, edges, tensor types, tasks and per-task edge state.

An `IR` is a DAG. Nodes are `input`, `stem`, `hidden` and `head` (one per task); each carries the
tensor type it produces (shape without the batch dimension). An edge carries a kind, an op that maps
its source's type to its destination's input type, the tasks it serves, and per task a keep flag
(after discretisation). The searched choices are `Decision`s (DESIGN §9) beside the edges they
govern: a `bernoulli` decision turns one edge on or off, a `categorical` one picks one of K options,
each a set of edges on together; their logits are per task, or shared by all tasks.

Nodes, edges and ops are immutable; a pass builds a new IR with `IR.copy()` and `dataclasses.replace`,
so no pass ever mutates its input. The JSON form (`to_json` / `from_json`) is lossless and is the format
of every dump and of the searched architecture.

A node's state: a node with `task=None` holds one state per task it is reached by (task states differ
because gates differ); a node owned by a task (`task="depth"`, as in MTL-NAS's per-task chains) holds
that task's state only, and any edge reading from it reads that state.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, Mapping, get_args

import networkx as nx

NodeKind = Literal["input", "stem", "hidden", "head"]
EdgeKind = Literal["stem", "internal", "read_in", "read_out", "cross"]
Aggregation = Literal["sum", "nddr", "gate", "mix"]
NddrNorm = Literal["batch", "layer", "none"]

NODE_KINDS: tuple[str, ...] = ("input", "stem", "hidden", "head")
EDGE_KINDS: tuple[str, ...] = ("stem", "internal", "read_in", "read_out", "cross")
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
SOFTMAX_AGGREGATIONS: tuple[str, ...] = ("gate", "mix")  # a softmax over the inputs: an input gated 0 leaves it
MIX_HALVES: tuple[str, ...] = ("nddr", "gate")  # what a `mix` aggregation mixes
DECISION_KINDS: tuple[str, ...] = ("bernoulli", "categorical")
DECISION_SCOPES: tuple[str, ...] = ("task", "shared")
SHARED = "*"  # the logits key of a decision shared by all tasks (not a valid task name)
FORMAT_VERSION = 2
EdgeKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class TensorType:
    """Shape of one sample: `(C, H, W)` for images, `(D,)` for vectors."""

    shape: tuple[int, ...]

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def channels(self) -> int:
        return self.shape[0]

    def __str__(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"


@dataclass(frozen=True, slots=True)
class Op:
    """An op from the op registry (`dagir.ops`) with its parameters, e.g. `conv_bn_relu{c_in=16, ...}`."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}{{{inner}}}" if inner else self.name


@dataclass(frozen=True, slots=True)
class Task:
    """A task the network serves. `kind` decides the default loss and metric."""

    name: str
    kind: str
    out_dim: int
    weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "out_dim": self.out_dim, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Node:
    """A node: it aggregates its incoming edges, then applies its own `op` (heads only, usually).

    `in_type` is the type every incoming edge must deliver; `type` is what the node produces
    (equal to `in_type` when `op` is None). `index` orders hidden nodes (h_1..h_N) and `stage`
    groups them by resolution; `task` marks a node owned by one task (a head, or a per-task chain).
    `fusion` initialises an `nddr` aggregation as (w_t, w_s): its 1x1 fusion starts as w_t times
    the identity on the node's own inputs and w_s / k times it on each of its k cross edges
    (MTL-NAS); None keeps torch's random initialisation. `query` is what a `gate` aggregation's
    softmax looks at: `inputs` (the pooled inputs it mixes) or `input` (the network's input, as
    MMoE's gates do). A `mix` aggregation is both: σ(m)·nddr + (1 − σ(m))·gate over the same inputs,
    m a weight of the node (0 at the start: the two halves alike). `nddr_norm` is what follows an
    `nddr` mixing (and `mix`'s nddr half) before its ReLU: MTL-NAS's batch norm, a layer norm (per
    sample: a group norm of one group on images), or none.
    """

    name: str
    kind: NodeKind
    type: TensorType
    in_type: TensorType | None = None
    op: Op | None = None
    index: int | None = None
    stage: int | None = None
    task: str | None = None
    aggregation: Aggregation = "sum"
    fusion: tuple[float, float] | None = None
    query: Literal["inputs", "input", "task"] = "inputs"
    nddr_norm: NddrNorm = "batch"

    @property
    def input_type(self) -> TensorType:
        return self.in_type if self.in_type is not None else self.type


@dataclass(frozen=True, slots=True)
class EdgeTaskState:
    """Per-task state of an edge: a keep flag after discretisation (None: not decided yet)."""

    keep: bool | None = None


@dataclass(frozen=True, slots=True)
class Edge:
    """A directed edge `src -> dst` applying `op` (None until `legalize-types` chooses it).

    `tasks` maps every task the edge serves to its state. `gated` marks a candidate the search may
    drop: `attach-gates` gives it a bernoulli decision (A for internal, B for read-in, Γ for read-out
    edges). An edge no decision governs always passes with weight 1.
    """

    src: str
    dst: str
    kind: EdgeKind
    op: Op | None
    tasks: Mapping[str, EdgeTaskState]
    gated: bool = False

    @property
    def name(self) -> str:
        return edge_name(self.src, self.dst)

    def is_active(self, task: str) -> bool:
        """Whether this edge carries `task`'s signal: it serves the task and was not dropped."""
        state = self.tasks.get(task)
        return state is not None and state.keep is not False

    def active_tasks(self) -> list[str]:
        return [t for t, s in self.tasks.items() if s.keep is not False]

    def with_task_state(self, task: str, **changes: Any) -> "Edge":
        states = dict(self.tasks)
        states[task] = replace(states[task], **changes)
        return replace(self, tasks=states)


def edge_name(src: str, dst: str) -> str:
    return f"edge_{src}_{dst}"


DecisionKind = Literal["bernoulli", "categorical"]
DecisionScope = Literal["task", "shared"]


@dataclass(frozen=True, slots=True)
class Decision:
    """A searched choice over edges (DESIGN §9).

    `options` lists the edge sets a decision chooses among: one option of one edge for a
    `bernoulli` (on or off), K >= 2 options for a `categorical` (exactly one is on). `tasks` are the
    tasks it decides for; `logits` holds, per task (`scope="task"`) or once under `SHARED`
    (`scope="shared"`), one logit for a bernoulli or K for a categorical. After `discretize`,
    `chosen` records per task what was chosen: 1 (on) or 0 (off) for a bernoulli, the option's
    index for a categorical. Gate values and probabilities come from `dagir.gates`.
    """

    name: str
    kind: DecisionKind
    options: tuple[tuple[EdgeKey, ...], ...]
    tasks: tuple[str, ...]
    logits: Mapping[str, tuple[float, ...]]
    scope: DecisionScope = "task"
    chosen: Mapping[str, int] | None = None

    def logits_of(self, task: str) -> tuple[float, ...]:
        """The logits that decide for `task` (its own, or the shared ones)."""
        return self.logits[SHARED if self.scope == "shared" else task]

    def edges(self) -> list[EdgeKey]:
        """Every edge the decision governs, each once, in option order."""
        return list(dict.fromkeys(key for option in self.options for key in option))

    def options_with(self, key: EdgeKey) -> list[int]:
        """The indices of the options that turn edge `key` on."""
        return [k for k, option in enumerate(self.options) if key in option]

    def probabilities(self, task: str, tau: float = 1.0) -> list[float]:
        """Option probabilities for `task` (a bernoulli: `[p(on)]`)."""
        from .gates import probabilities
        return probabilities(self.kind, self.logits_of(task), tau)

    def edge_probability(self, key: EdgeKey, task: str, tau: float = 1.0) -> float:
        """The probability that edge `key` is on for `task`: σ(l/τ), or the options' summed softmax."""
        weights = self.probabilities(task, tau)
        return weights[0] if self.kind == "bernoulli" else math.fsum(weights[k] for k in self.options_with(key))

    def with_logits(self, logits: Mapping[str, Iterable[float]]) -> "Decision":
        return replace(self, logits={owner: tuple(float(v) for v in values) for owner, values in logits.items()})


def gate_query_width(node: Node, network_input: TensorType) -> int | None:
    """The width of a `gate` node's own query: the network input's channels (`query="input"`), 0
    for a task's own gate (`query="task"`: no query, a learned logit per input), or None when it
    looks at the inputs it mixes (`query="inputs"`, and every other aggregation)."""
    if node.aggregation not in SOFTMAX_AGGREGATIONS or node.query == "inputs":
        return None
    return 0 if node.query == "task" else network_input.channels


@dataclass
class IR:
    """The graph: tasks, nodes by name, edges by `(src, dst)`, and graph-level facts.

    `decisions` are the searched choices by name (`edge_h1_h2` for the bernoulli of one edge).
    `max_span` is the flow restriction in force (None: the full DAG). `types_legal` is set once
    `legalize-types` has given every edge an op; `discretized` and `reduced` by the post-search passes.
    `provenance` lists the passes that produced this IR, in order.
    """

    name: str
    tasks: list[Task]
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    max_span: int | None = None
    types_legal: bool = False
    discretized: bool = False
    reduced: bool = False
    provenance: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- building -------------------------------------------------------------------------------
    def copy(self) -> "IR":
        """A new IR sharing the immutable nodes and edges: cheap, and safe to edit."""
        return IR(self.name, list(self.tasks), dict(self.nodes), dict(self.edges), dict(self.decisions),
                  self.max_span,
                  self.types_legal, self.discretized, self.reduced, list(self.provenance),
                  json.loads(json.dumps(self.meta)))

    def add_node(self, node: Node) -> None:
        self.nodes[node.name] = node

    def add_edge(self, edge: Edge) -> None:
        self.edges[(edge.src, edge.dst)] = edge

    def remove_edge(self, src: str, dst: str) -> None:
        """Delete an edge and every decision's claim on it (a bernoulli over it goes with it)."""
        del self.edges[(src, dst)]
        for name, decision in list(self.decisions.items()):
            if (src, dst) not in decision.edges():
                continue
            if decision.kind == "bernoulli":
                del self.decisions[name]
            else:
                options = tuple(tuple(key for key in option if key != (src, dst)) for option in decision.options)
                self.decisions[name] = replace(decision, options=options)

    def add_decision(self, decision: Decision) -> None:
        self.decisions[decision.name] = decision

    def set_bernoulli_logit(self, key: EdgeKey, task: str, logit: float) -> None:
        """Set `task`'s logit on edge `key`'s bernoulli decision, first creating the decision (per
        task, for every task the edge serves, logit 0: σ = 0.5) if the edge has none."""
        edge = self.edges[key]
        decision = self.decisions.get(edge.name)
        if decision is None:
            tasks = tuple(edge.tasks)
            decision = Decision(edge.name, "bernoulli", ((key,),), tasks, {t: (0.0,) for t in tasks})
        owner = SHARED if decision.scope == "shared" else task
        self.decisions[edge.name] = replace(decision, logits={**decision.logits, owner: (float(logit),)})

    def query_width(self, node: Node) -> int | None:
        """The width of a `gate` node's own query (see `gate_query_width`)."""
        return gate_query_width(node, self.input_node().type)

    def decision_of_edge(self) -> dict[EdgeKey, Decision]:
        """The decision governing each governed edge (the verifier checks there is at most one)."""
        return {key: decision for decision in self.decisions.values() for key in decision.edges()}

    # -- queries --------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def hidden_nodes(self) -> list[Node]:
        """Hidden nodes ordered by index (h_1..h_N)."""
        return sorted((n for n in self.nodes.values() if n.kind == "hidden"),
                      key=lambda n: (n.index if n.index is not None else 0, n.name))

    def nodes_of_kind(self, kind: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == kind]

    def edges_of_kind(self, kind: str) -> list[Edge]:
        return [e for e in self.edges.values() if e.kind == kind]

    def head_of(self, task: str) -> Node:
        for node in self.nodes.values():
            if node.kind == "head" and node.task == task:
                return node
        raise KeyError(f"no head for task {task!r}")

    def input_node(self) -> Node:
        return self.nodes_of_kind("input")[0]

    def in_edges(self) -> dict[str, list[Edge]]:
        """Incoming edges of every node, in a canonical order (by source: kind, index, name).

        Aggregations with one weight slot per incoming edge (nddr, gate) rely on this order, so it
        must not depend on the order in which passes happened to insert the edges.
        """
        incoming: dict[str, list[Edge]] = {name: [] for name in self.nodes}
        for edge in self.edges.values():
            incoming.setdefault(edge.dst, []).append(edge)
        for edges in incoming.values():
            edges.sort(key=lambda e: self._order_key(e.src) if e.src in self.nodes else (99, 0, e.src))
        return incoming

    def out_edges(self) -> dict[str, list[Edge]]:
        outgoing: dict[str, list[Edge]] = {name: [] for name in self.nodes}
        for edge in self.edges.values():
            outgoing.setdefault(edge.src, []).append(edge)
        return outgoing

    def topological_order(self) -> list[str]:
        """Node names in a deterministic topological order (raises `nx.NetworkXUnfeasible` on a cycle)."""
        return list(nx.lexicographical_topological_sort(self.to_networkx(), key=self._order_key))

    def _order_key(self, name: str) -> tuple[int, int, str]:
        node = self.nodes[name]
        return (NODE_KINDS.index(node.kind), node.index if node.index is not None else 0, name)

    def to_networkx(self) -> nx.DiGraph:
        """A networkx view: node attribute `node`, edge attribute `edge` hold the IR objects."""
        graph = nx.DiGraph()
        for name, node in self.nodes.items():
            graph.add_node(name, node=node)
        for (src, dst), edge in self.edges.items():
            graph.add_edge(src, dst, edge=edge)
        return graph

    def summary(self) -> dict[str, Any]:
        counts = {kind: 0 for kind in EDGE_KINDS}
        for edge in self.edges.values():
            counts[edge.kind] += 1
        return {"nodes": len(self.nodes), "edges": len(self.edges),
                "edges_by_kind": {k: v for k, v in counts.items() if v}}

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "dagir-ir", "version": FORMAT_VERSION, "name": self.name,
            "tasks": [t.to_dict() for t in self.tasks],
            "max_span": self.max_span, "types_legal": self.types_legal,
            "discretized": self.discretized, "reduced": self.reduced,
            "provenance": list(self.provenance), "meta": self.meta,
            "nodes": [_node_to_dict(n) for n in self.nodes.values()],
            "edges": [_edge_to_dict(e) for e in self.edges.values()],
            "decisions": [_decision_to_dict(d) for d in self.decisions.values()],
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IR":
        if data.get("format") != "dagir-ir":
            raise ValueError("not a dagir IR (missing \"format\": \"dagir-ir\")")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported IR version {data.get('version')!r} (expected {FORMAT_VERSION})")
        ir = cls(name=data["name"], tasks=[Task(**t) for t in data["tasks"]],
                 max_span=data["max_span"], types_legal=data["types_legal"],
                 discretized=data["discretized"], reduced=data["reduced"],
                 provenance=list(data["provenance"]), meta=dict(data.get("meta", {})))
        for raw in data["nodes"]:
            ir.add_node(_node_from_dict(raw))
        for raw in data["edges"]:
            ir.add_edge(_edge_from_dict(raw))
        for raw in data.get("decisions", []):
            ir.add_decision(_decision_from_dict(raw))
        return ir

    @classmethod
    def from_json(cls, text: str) -> "IR":
        return cls.from_dict(json.loads(text))


def _op_to_dict(op: Op | None) -> dict[str, Any] | None:
    return None if op is None else {"name": op.name, "params": dict(op.params)}


def _op_from_dict(raw: Mapping[str, Any] | None) -> Op | None:
    return None if raw is None else Op(raw["name"], dict(raw["params"]))


def _node_to_dict(node: Node) -> dict[str, Any]:
    return {"name": node.name, "kind": node.kind, "type": list(node.type.shape),
            "in_type": None if node.in_type is None else list(node.in_type.shape),
            "op": _op_to_dict(node.op), "index": node.index, "stage": node.stage,
            "task": node.task, "aggregation": node.aggregation,
            "fusion": None if node.fusion is None else list(node.fusion), "query": node.query,
            "nddr_norm": node.nddr_norm}


def _node_from_dict(raw: Mapping[str, Any]) -> Node:
    return Node(name=raw["name"], kind=raw["kind"], type=TensorType(tuple(raw["type"])),
                in_type=None if raw["in_type"] is None else TensorType(tuple(raw["in_type"])),
                op=_op_from_dict(raw["op"]), index=raw["index"], stage=raw["stage"],
                task=raw["task"], aggregation=raw["aggregation"],
                fusion=None if raw.get("fusion") is None else tuple(raw["fusion"]), query=raw.get("query", "inputs"),
                nddr_norm=raw.get("nddr_norm", "batch"))


def _edge_to_dict(edge: Edge) -> dict[str, Any]:
    return {"src": edge.src, "dst": edge.dst, "kind": edge.kind, "op": _op_to_dict(edge.op),
            "gated": edge.gated,
            "tasks": {t: {"keep": s.keep} for t, s in edge.tasks.items()}}


def _edge_from_dict(raw: Mapping[str, Any]) -> Edge:
    return Edge(src=raw["src"], dst=raw["dst"], kind=raw["kind"], op=_op_from_dict(raw["op"]),
                gated=raw["gated"],
                tasks={t: EdgeTaskState(s["keep"]) for t, s in raw["tasks"].items()})


def _decision_to_dict(decision: Decision) -> dict[str, Any]:
    return {"name": decision.name, "kind": decision.kind, "scope": decision.scope,
            "tasks": list(decision.tasks),
            "options": [[list(key) for key in option] for option in decision.options],
            "logits": {owner: list(values) for owner, values in decision.logits.items()},
            "chosen": None if decision.chosen is None else dict(decision.chosen)}


def _decision_from_dict(raw: Mapping[str, Any]) -> Decision:
    return Decision(name=raw["name"], kind=raw["kind"], scope=raw["scope"], tasks=tuple(raw["tasks"]),
                    options=tuple(tuple((src, dst) for src, dst in option) for option in raw["options"]),
                    logits={owner: tuple(float(v) for v in values) for owner, values in raw["logits"].items()},
                    chosen=None if raw.get("chosen") is None else {t: int(k) for t, k in raw["chosen"].items()})


def all_tasks(tasks: Iterable[str]) -> dict[str, EdgeTaskState]:
    """Fresh per-task state for an edge serving every task in `tasks`."""
    return {t: EdgeTaskState() for t in tasks}


