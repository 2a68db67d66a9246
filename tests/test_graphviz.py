"""The graphviz backend: DOT text for any IR, and rendering that degrades to the .dot alone."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dagir.backends import graphviz_dot
from dagir.backends.graphviz_dot import (DROPPED_COLOUR, SHARED_COLOUR, render, task_colours,
                                         to_dot)
from dagir.ir import IR, Edge, EdgeTaskState, Node, Op, Task, TensorType, all_tasks
from dagir.pipeline import compile_spec
from dagir.spec import Spec

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="graphviz `dot` is not installed")


@pytest.fixture(scope="module")
def supernet() -> IR:
    return compile_spec(Spec(tasks=[{"name": "a", "kind": "classification", "classes": 10},
                                    {"name": "b", "kind": "regression"}]))


def edge_lines(dot: str, src: str, dst: str) -> list[str]:
    return [line for line in dot.splitlines() if line.strip().startswith(f'"{src}" -> "{dst}" [')]


def attr(line: str, key: str) -> str:
    match = re.search(rf'\b{key}="([^"]*)"', line)
    assert match, f"no {key} in {line}"
    return match.group(1)


def with_states(ir: IR, states: dict[tuple[str, str], dict[str, EdgeTaskState]]) -> IR:
    out = ir.copy()
    for key, tasks in states.items():
        out.edges[key] = dataclasses.replace(out.edges[key], tasks={**out.edges[key].tasks, **tasks})
    return out


def per_task_chains() -> IR:
    """An MTL-NAS-like IR by hand: a chain per task, cross edges, awkward names to escape."""
    tasks = ["seg", 'de"pth']
    ir = IR(name='mtl "nas" \\ <net>', tasks=[Task(t, "regression", 1) for t in tasks],
            provenance=["build-cross-task{stages=2}"])
    ir.add_node(Node("input", "input", TensorType((3, 8, 8))))
    ir.add_node(Node("stem", "stem", TensorType((4, 8, 8))))
    ir.add_edge(Edge("input", "stem", "stem", Op("conv"), all_tasks(tasks)))
    for t, task in enumerate(tasks):
        previous = "stem"
        for stage in range(2):
            name = f"{task}/h{stage}"
            ir.add_node(Node(name, "hidden", TensorType((4, 8 >> stage, 8 >> stage)), index=stage,
                             stage=stage, task=task))
            ir.add_edge(Edge(previous, name, "internal" if stage else "read_in", Op("conv"),
                             {task: EdgeTaskState()}))
            previous = name
        ir.add_node(Node(f"head<{t}>", "head", TensorType((1,)), in_type=TensorType((4,)), task=task))
        ir.add_edge(Edge(previous, f"head<{t}>", "read_out", Op("pool"), {task: EdgeTaskState()}))
    ir.add_edge(Edge("seg/h0", 'de"pth/h1', "cross", Op("nddr"), {'de"pth': EdgeTaskState()}, gated=True))
    ir.set_bernoulli_logit(("seg/h0", 'de"pth/h1'), 'de"pth', 0.0)
    return ir


def test_every_node_is_drawn_once_with_its_type(supernet: IR) -> None:
    dot = to_dot(supernet)
    for node in supernet.nodes.values():
        declarations = [line for line in dot.splitlines() if line.strip().startswith(f'"{node.name}" [')]
        assert len(declarations) == 1, node.name
        assert str(node.type) in attr(declarations[0], "label")
    shapes = {attr(line, "shape") for name in ("input", "stem", "h1", "head_a")
              for line in dot.splitlines() if line.strip().startswith(f'"{name}" [')}
    assert len(shapes) == 4  # input, stem, hidden and head nodes look different


def test_one_cluster_per_stage_holding_its_nodes(supernet: IR) -> None:
    dot = to_dot(supernet)
    stages = sorted({n.stage for n in supernet.hidden_nodes()})
    assert dot.count("subgraph \"cluster_stage_") == len(stages) == 3
    assert 'label="stage 0 · [16, 36, 36]"' in dot and 'label="stage 2 · [64, 9, 9]"' in dot
    stage_1 = dot.split('"cluster_stage_1"')[1].split("}")[0]
    assert {"h4", "h5", "h6"} == set(re.findall(r'"(h\d+)" \[', stage_1))


def test_legend_names_every_task_in_its_colour_and_the_last_pass(supernet: IR) -> None:
    dot = to_dot(supernet)
    colours = task_colours(supernet)
    assert len(set(colours.values())) == 2 and SHARED_COLOUR not in colours.values()
    legend = dot.split("label=<", 1)[1].split(">];", 1)[0]
    for task, colour in colours.items():
        assert f'<font color="{colour}">■■■</font> {task}' in legend
    assert "attach-gates{" in legend and supernet.name in legend


def test_shared_edges_grey_task_edges_coloured(supernet: IR) -> None:
    dot = to_dot(supernet)
    colours = task_colours(supernet)
    # every internal edge serves both tasks with the same gate: drawn once, grey
    assert [attr(line, "color") for line in edge_lines(dot, "h1", "h2")] == [SHARED_COLOUR]
    # a read-out edge serves its task only
    assert [attr(line, "color") for line in edge_lines(dot, "h9", "head_b")] == [colours["b"]]
    assert attr(edge_lines(dot, "h9", "head_b")[0], "style") == "dotted"
    assert attr(edge_lines(dot, "stem", "h3")[0], "style") == "dashed"


def test_gates_give_parallel_edges_with_widths_by_sigmoid(supernet: IR) -> None:
    ir = supernet.copy()
    ir.set_bernoulli_logit(("h1", "h2"), "a", 0.0)
    ir.set_bernoulli_logit(("h1", "h2"), "b", 50.0)
    colours = task_colours(ir)
    lines = edge_lines(to_dot(ir), "h1", "h2")
    widths = {attr(line, "color"): float(attr(line, "penwidth")) for line in lines}
    assert widths == {colours["a"]: pytest.approx(2.2), colours["b"]: pytest.approx(4.0)}
    uniform = edge_lines(to_dot(ir, edge_widths="none"), "h1", "h2")
    assert len({attr(line, "penwidth") for line in uniform}) == 1


def test_dropped_edges_are_faint_or_left_out(supernet: IR) -> None:
    colours = task_colours(supernet)
    ir = with_states(supernet, {
        ("h1", "h2"): {"a": EdgeTaskState(keep=False), "b": EdgeTaskState(keep=True)},
        ("h2", "h3"): {"a": EdgeTaskState(keep=False), "b": EdgeTaskState(keep=False)},
    })
    dot = to_dot(ir)
    assert [attr(line, "color") for line in edge_lines(dot, "h1", "h2")] == [colours["b"]]
    assert [attr(line, "color") for line in edge_lines(dot, "h2", "h3")] == [DROPPED_COLOUR]


def test_flow_widths_are_shares_of_the_task_flow(supernet: IR) -> None:
    flows = {"a": {("input", "stem"): 2.0, ("h1", "h2"): 1.0}, "b": {"edge_input_stem": 4.0}}
    dot = to_dot(supernet, flows=flows)
    colours = task_colours(supernet)
    widths = {attr(line, "color"): float(attr(line, "penwidth")) for line in edge_lines(dot, "h1", "h2")}
    assert widths == {colours["a"]: pytest.approx(2.2), colours["b"]: pytest.approx(0.4)}
    assert "width = flow" in dot
    with pytest.raises(ValueError, match="flows"):
        to_dot(supernet, edge_widths="flow")


def test_per_task_chains_are_clustered_and_names_escaped() -> None:
    ir = per_task_chains()
    dot = to_dot(ir)
    assert dot.count('subgraph "cluster_stage_') == 2 + 4  # two stages, each with a cluster per task
    assert 'label="task de\\"pth"' in dot
    assert '"de\\"pth/h1" [' in dot  # the quote in a name is escaped
    assert 'digraph "mtl \\"nas\\" \\\\ <net>"' in dot
    assert "mtl &quot;nas&quot; \\ &lt;net&gt;" in dot  # and HTML-escaped in the legend
    cross = edge_lines(dot, "seg/h0", 'de\\"pth/h1')
    assert len(cross) == 1 and attr(cross[0], "style") == "bold"
    assert to_dot(ir) == dot  # deterministic


@needs_dot
@pytest.mark.parametrize("build", ["supernet", "chains"])
def test_dot_parses_the_text_and_draws_every_node(build: str, supernet: IR) -> None:
    ir = supernet if build == "supernet" else per_task_chains()
    result = subprocess.run(["dot", "-Tsvg"], input=to_dot(ir), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "Error" not in result.stderr, result.stderr
    titles = re.findall(r'<g id="node\d+" class="node">\s*<title>(.*?)</title>', result.stdout)
    unescaped = {t.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
                 for t in titles}
    assert unescaped == set(ir.nodes)


@needs_dot
def test_render_writes_dot_svg_and_png(supernet: IR, tmp_path: Path) -> None:
    written = render(to_dot(supernet), tmp_path / "out" / "05-attach-gates", formats=("svg", "png"))
    assert [p.name for p in written] == ["05-attach-gates.dot", "05-attach-gates.svg",
                                         "05-attach-gates.png"]
    assert "head_a" in written[1].read_text()
    assert written[2].read_bytes().startswith(b"\x89PNG")


def test_render_without_dot_writes_only_the_dot_file(supernet: IR, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    text = to_dot(supernet)
    with pytest.warns(RuntimeWarning, match="not installed"):
        written = render(text, tmp_path / "graph", formats=("svg", "png"))
    assert written == [tmp_path / "graph.dot"] and written[0].read_text() == text
    assert not (tmp_path / "graph.svg").exists()


def test_render_skips_very_large_graphs(supernet: IR, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graphviz_dot.shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(graphviz_dot, "RENDER_EDGE_LIMIT", 10)
    monkeypatch.setattr(graphviz_dot.subprocess, "run", lambda *a, **k: pytest.fail("dot was run"))
    with pytest.warns(RuntimeWarning, match="not rendered"):
        written = render(to_dot(supernet), tmp_path / "big")
    assert written == [tmp_path / "big.dot"]
