"""`insert-read-io`: read-in and read-out layers (DESIGN §4)."""
from __future__ import annotations

from dataclasses import replace

from dagir.errors import UserError
from dagir.ir import IR, Edge, EdgeTaskState, Node, all_tasks
from dagir.pass_manager import Pass, register_pass


@register_pass
class InsertReadIO(Pass):
    """Let every task enter at any hidden node and leave from any hidden node.

    Read-in: an edge from the stem (x0) to every hidden node, so a task's sub-network may start
    anywhere (polytrees). Where each task has a stem of its own (`stem_<t>`, owned by t), a node
    owned by task t reads t's stem; a shared node, or a task's node when the task has no stem of its
    own, reads the shared stem; an IR where that names no single stem is refused. Read-out: an edge from every hidden node to every task's head, so a task may
    exit early. The edges gain learned gates (B and Γ) — including the stem -> h_1 and h_N -> head
    edges the build pass made, which stay ungated when the switch is off.
    """

    name = "insert-read-io"
    read_in: bool = True
    read_out: bool = True

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        stems = out.nodes_of_kind("stem")
        hidden = out.hidden_nodes()
        if self.read_in and stems:
            every_task = all_tasks(out.task_names)
            for node in hidden:
                tasks = every_task if node.task is None else {node.task: EdgeTaskState()}
                stem = _stem_of(stems, node)
                existing = out.edges.get((stem, node.name))
                out.add_edge(replace(existing, gated=True) if existing
                             else Edge(stem, node.name, "read_in", None, tasks, gated=True))
        if self.read_out:
            for task in out.tasks:
                head = out.head_of(task.name).name
                for node in hidden:
                    if node.task not in (None, task.name):
                        continue
                    existing = out.edges.get((node.name, head))
                    out.add_edge(replace(existing, gated=True) if existing
                                 else Edge(node.name, head, "read_out", None, {task.name: EdgeTaskState()}, gated=True))
        return out


def _stem_of(stems: list[Node], node: Node) -> str:
    """The stem whose x0 `node` reads in: its owner's stem, else the one shared stem."""
    owned = [stem.name for stem in stems if stem.task is not None and stem.task == node.task]
    shared = [stem.name for stem in stems if stem.task is None]
    found = owned or shared
    if len(found) != 1:
        owner = f"owned by task {node.task!r} or " if node.task is not None else ""
        raise UserError(f"insert-read-io: hidden node {node.name!r} needs one stem {owner}shared by every task "
                        f"to read in from, found {found or 'none'} among the stems "
                        f"{sorted(stem.name for stem in stems)}")
    return found[0]
