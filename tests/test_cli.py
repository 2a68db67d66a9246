"""Golden tests of `dagir compile` on the examples, and bad input at the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dagir.cli import main
from dagir.ir_io import read_ir
from dagir.ir_text import format_ir

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"


def dagir(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("example", ["multimnist", "digits"])
def test_compile_examples_match_golden_output(tmp_path, example):
    out = tmp_path / "out"
    code, stdout, stderr = dagir("compile", str(ROOT / "examples" / f"{example}.yaml"), "-o", str(out))
    assert code == 0, stderr
    printed = "\n".join(line for line in stdout.splitlines() if not line.startswith(("wrote", "supernet:")))
    golden = GOLDEN / f"compile_{example}.txt"
    if os.environ.get("DAGIR_UPDATE_GOLDEN"):
        golden.write_text(printed + "\n")
    assert printed + "\n" == golden.read_text()
    final_text = format_ir(read_ir(out / "passes" / "05-attach-gates.json"))
    golden_ir = GOLDEN / f"compile_{example}.ir.txt"
    if os.environ.get("DAGIR_UPDATE_GOLDEN"):
        golden_ir.write_text(final_text + "\n")
    assert final_text + "\n" == golden_ir.read_text()
    names = ["01-build-central", "02-flow-restrict", "03-insert-read-io", "04-legalize-types", "05-attach-gates"]
    for name in names:
        assert (out / "passes" / f"{name}.dot").is_file()
        read_ir(out / "passes" / f"{name}.json")  # parses and verifies
    assert "def forward(self, x):" in (out / "supernet.py").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert [row["pass"].split("{")[0] for row in summary["passes"]] == [n[3:] for n in names]
    assert (out / "spec.resolved.yaml").is_file()


def test_print_between_passes_and_time_passes(tmp_path):
    code, stdout, _ = dagir("compile", str(ROOT / "examples" / "digits.yaml"), "-o", str(tmp_path / "o"),
                            "--print-between-passes", "--time-passes", "--set", "network.central.nodes=3",
                            "--set", "network.central.stages=1", "--set", "network.central.channels=[8]")
    assert code == 0
    assert stdout.count("// ----- IR after") == 5
    assert "<- h1 [internal] linear_relu{d_in=8, d_out=8}" in stdout
    assert " ms" in stdout.splitlines()[stdout.splitlines().index(next(
        l for l in stdout.splitlines() if l.lstrip().startswith("#")))]


def test_viz_draws_an_ir_dump(tmp_path):
    assert dagir("compile", str(ROOT / "examples" / "digits.yaml"), "-o", str(tmp_path / "o"))[0] == 0
    code, stdout, _ = dagir("viz", str(tmp_path / "o" / "passes" / "05-attach-gates.json"), "-o",
                            str(tmp_path / "drawing"))
    assert code == 0 and (tmp_path / "drawing.dot").is_file()


def test_passes_lists_every_pass():
    code, stdout, _ = dagir("passes")
    assert code == 0
    for name in ("build-central", "flow-restrict", "insert-read-io", "legalize-types", "attach-gates",
                 "discretize", "flow-reduce", "share-states"):
        assert name in stdout
    # a pass's whole first paragraph (it stopped at the docstring's first line), a choice's values
    assert "or one logit all tasks share (`scope=shared`)." in stdout and "scope: task | shared = \"task\"" in stdout


SPEC = """\
name: t
data: {dataset: digits}
tasks:
  - {name: digit, kind: classification, classes: 10}
network:
  central: {nodes: 3, stages: 1, channels: [8]}
"""


@pytest.mark.parametrize("text, extra, message", [
    (SPEC.replace("nodes: 3", "nodes: 0"), [], "spec.yaml:6:13: network.central.nodes: must be >= 1 (got 0)"),
    (SPEC + "  flow_restriction: {max_span: 0}\n", [], "network.flow_restriction.max_span: must be >= 1"),
    (SPEC.replace("digits", "imagenet"), [], "data.dataset: unknown dataset 'imagenet'"),
    (SPEC + "  colour: 3\n", [], "spec.yaml:7:3: network.colour: unknown field"),
    (SPEC + "pipeline: {before_search: [flow-restrict, attach-gates]}\n", [], "the pipeline builds nothing"),
    (SPEC + "pipeline: {before_search: [build-central, frobnicate]}\n", [], "unknown pass 'frobnicate'"),
    (SPEC + "pipeline: {before_search: [build-central, build-hard-sharing]}\n", [],
     "spec.yaml:7:12: pipeline.before_search: a pipeline builds once, with its first pass; this one builds "
     "with build-central, build-hard-sharing"),
    (SPEC + "train: {search: {split: 1.5}}\n", [], "spec.yaml:7:18: train.search.split: must be < 1.0 (got 1.5)"),
    (SPEC + "train: {search: {strategy: evolution}}\n", [], "train.search.strategy: must be one of"),
    (SPEC + "  central: {edge_op: conv}\n", [], "duplicate key 'central'"),
    (SPEC, ["--set", "network.central.edge_op=conv"], "'conv' needs image inputs"),
    ("name: x\ntasks:\n  - {name: species, kind: classification, classes: 3}\n", [],
     "tasks.0.name: data set 'multimnist' has no task 'species' (its tasks: left (classification), right "
     "(classification), sum (regression)); the spec names no data.dataset, and multimnist is the default"),
    (SPEC, ["--set", "train.warmup.epochs=true"], "train.warmup.epochs: must be a number or a name, not true"),
    (SPEC, ["--set", "tasks.0.classes=[3"], "--set tasks.0.classes=[3: bad value: expected ',' or ']', but got "
                                             "'<stream end>' at column 3 of '[3'"),
    ("tasks: [\n", [], "malformed YAML"),
])
def test_bad_spec_exits_2_with_one_located_message(tmp_path, text, extra, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    out = tmp_path / "out"
    code, stdout, stderr = dagir("compile", str(spec), "-o", str(out), *extra)
    assert code == 2
    assert message in stderr, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not out.exists()  # nothing half-written


def test_missing_spec_and_unwritable_output(tmp_path):
    code, _, stderr = dagir("compile", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: no such file" in stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, stderr = dagir("compile", str(spec), "-o", str(blocker / "out"))
    assert code == 2 and "cannot write the output folder" in stderr
    code, _, stderr = dagir("compile", str(spec), "-o", str(blocker))
    assert code == 2 and "is not a folder" in stderr


def test_failed_compile_keeps_what_out_already_held(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    assert dagir("compile", str(spec), "-o", str(out))[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    spec.write_text(SPEC + "pipeline: {before_search: [build-central, frobnicate]}\n")
    assert dagir("compile", str(spec), "-o", str(out))[0] == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


def test_compile_waits_for_no_one_into_a_folder_another_command_holds(tmp_path):
    """A run or bench at work holds its folder; a compile into it (even with --overwrite) refuses
    and writes nothing there."""
    from dagir.run_folder import locked_folder

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    with locked_folder(out, "run"):
        code, _, stderr = dagir("compile", str(spec), "-o", str(out), "--overwrite")
    assert code == 2 and "in use by" in stderr and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in out.iterdir()) == [".dagir.lock"]


def test_viz_on_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, stderr = dagir("viz", str(bad))
    assert code == 2 and "bad.json:1:2: not valid JSON" in stderr
    bad.write_text('{"hello": 1}')
    code, _, stderr = dagir("viz", str(bad))
    assert code == 2 and "not a dagir IR" in stderr


def test_real_process_exit_code_and_no_traceback(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("nodes: 3", "nodes: -1"))
    result = subprocess.run([sys.executable, "-m", "dagir.cli", "compile", str(spec), "-o", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("network.central.nodes: must be >= 1 (got -1)")
    assert "Traceback" not in result.stderr


def test_viz_rejects_bad_decisions_located(tmp_path):
    code, _, stderr = dagir("compile", str(ROOT / "examples" / "digits.yaml"), "-o", str(tmp_path / "o"))
    assert code == 0, stderr
    good = json.loads((tmp_path / "o" / "passes" / "05-attach-gates.json").read_text())
    for change, message in (
            (lambda d: d["decisions"][0]["options"][0].__setitem__(0, ["h1", "nowhere"]),
             "decision 'edge_h1_h2': governs edge h1 -> nowhere, which does not exist"),
            (lambda d: d["decisions"][0].update(kind="categorical", logits={"digit": [0.0]}),
             "a categorical decision needs at least two options, it has 1")):
        data = json.loads(json.dumps(good))
        change(data)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        code, _, stderr = dagir("viz", str(bad))
        assert code == 2 and message in stderr and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("text, message", [
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")) + "tasks: []\n",
     "expands to more than 100,000 values (through YAML aliases?) (DAGIR_MAX_SPEC_VALUES)"),
    ("a: " + "[" * 100 + "]" * 100 + "\n", "nests deeper than 32 levels (DAGIR_MAX_SPEC_DEPTH)"),
    ("name: x\n" + "".join(f"key{i}: {i}\n" for i in range(120_000)), "more than 1,000,000 (DAGIR_MAX_SPEC_BYTES)"),
])
def test_specs_past_a_bound_are_refused_at_once_naming_it(tmp_path, text, message):
    import time

    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    started = time.perf_counter()
    code, _, stderr = dagir("compile", str(spec), "-o", str(tmp_path / "o"))
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "o").exists()
