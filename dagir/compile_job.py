"""`dagir compile`: run the pre-search pipeline and write every pass's IR, drawing and summary.

OUT/
  spec.resolved.yaml        the spec with every default filled in
  passes/NN-name.json|.dot|.svg   the IR after each pass
  supernet.py               the generated supernet's code (torch.fx)
  summary.json              nodes, edges, parameters and time after each pass
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .ir import IR
from .ir_stats import pass_summary
from .ir_text import format_ir
from .output_dir import staged_output
from .pass_manager import PassResult
from .pipeline import before_search_pipeline, compile_spec
from .spec import Spec


@dataclass
class CompileOptions:
    print_between_passes: bool = False
    time_passes: bool = False
    verify: bool = True


@dataclass
class CompileReport:
    ir: IR
    rows: list[dict]
    supernet_parameters: int


def write_resolved_spec(spec: Spec, folder: Path) -> None:
    text = spec.resolved_yaml()
    (folder / "spec.resolved.yaml").write_text(text)


def dump_ir(ir: IR, stem: Path, *, draw: bool) -> None:
    """Write `stem.json`, and with `draw` the DOT text and its rendering."""
    stem.with_suffix(".json").write_text(ir.to_json())
    if draw:
        from dagir.backends.graphviz_dot import render, to_dot
        render(to_dot(ir), stem, formats=("svg", "png"))


def compile_to_folder(spec: Spec, out: Path, options: CompileOptions,
                      echo: Callable[[str], None] = print, *, replace: bool = False) -> CompileReport:
    """Compile `spec` into `out` (atomically: nothing lands in `out` unless all of it succeeds); with
    `replace`, what else `out` held (a run's results and checkpoints) goes once the compile succeeded."""
    from .run_folder import LOCK_FILE

    passes = before_search_pipeline(spec)
    with staged_output(out, replace=replace, keep=(LOCK_FILE,)) as staging:
        write_resolved_spec(spec, staging)
        (staging / "passes").mkdir()
        rows: list[dict] = []

        def after_pass(result: PassResult) -> None:
            stem = staging / "passes" / f"{result.index:02d}-{result.pass_.name}"
            dump_ir(result.ir, stem, draw=True)
            rows.append({"pass": str(result.pass_), "seconds": round(result.seconds, 6),
                         **pass_summary(result.ir)})
            if options.print_between_passes:
                echo(f"// ----- IR after {result.pass_} -----")
                echo(format_ir(result.ir))

        ir = compile_spec(spec, passes=passes, verify_each=options.verify, on_pass=after_pass)
        from dagir.backends.torch_supernet import count_parameters, lower_supernet
        module = lower_supernet(ir)
        (staging / "supernet.py").write_text(module.code)
        report = CompileReport(ir, rows, count_parameters(module))
        (staging / "summary.json").write_text(json.dumps(
            {"name": spec.name, "passes": rows, "supernet_parameters": report.supernet_parameters},
            indent=1))
    return report
