"""The `dagir` command line. Each command is a thin wrapper over the Python API.

Exit codes: 0 success, 2 bad input (one clear message, no traceback), 1 internal error, 130 Ctrl-C
(a run stops between two steps and writes its checkpoint there first).
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from .errors import SpecError, UserError, VerificationError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dagir: a compiler for multi-task network search spaces.")

SetOption = typer.Option(None, "--set", help="Override a spec value: --set train.search.epochs=2")


def _echo(text: str) -> None:
    typer.echo(text)


@contextmanager
def _saying_what_ctrl_c_kept(otherwise: str) -> Iterator[None]:
    """Ctrl-C: one line on what was kept, then typer's exit 130 (typer turns KeyboardInterrupt into
    that exit itself, so `main` never sees it). A stage's loop says where it stopped and that its
    checkpoint is written there; `otherwise` says it where the loop was not running."""
    try:
        yield
    except KeyboardInterrupt as err:
        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"dagir: interrupted: {str(err) or otherwise}", err=True)
        raise


@app.command("compile")
def compile_command(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="The search-space spec (YAML)."),
    out: Path = typer.Option(Path("out"), "-o", "--out", help="Output folder."),
    overrides: Optional[List[str]] = SetOption,
    print_between_passes: bool = typer.Option(False, help="Print the IR after every pass."),
    time_passes: bool = typer.Option(False, help="Print the time each pass took."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run the verifier between passes."),
    overwrite: bool = typer.Option(False, help="Compile into a folder that holds a dagir run: once the compile "
                                   "succeeds, the folder holds it alone (the run's results and checkpoints go)."),
) -> None:
    """Run the pre-search pipeline: IR, drawing and summary after every pass, and the supernet code."""
    from .compile_job import CompileOptions, compile_to_folder
    from .run_folder import holds_a_bench, holds_a_run, locked_folder
    from .spec import load_spec

    spec = load_spec(spec_path, overrides or [])
    # a folder that exists may hold a run or bench at work: held while compiling, as they hold it
    with locked_folder(out, "compile") if out.is_dir() else nullcontext():
        if holds_a_run(out) and not overwrite:
            raise UserError(f"{out}: holds a dagir run, which a compile would replace; compile into another "
                            "folder, or pass --overwrite")
        if holds_a_bench(out):
            raise UserError(f"{out}: holds a bench's results; compile into another folder")
        options = CompileOptions(print_between_passes=print_between_passes, time_passes=time_passes,
                                 verify=verify)
        # over a run (--overwrite) the folder then holds the compile alone: no results of another spec
        report = compile_to_folder(spec, out, options, echo=_echo, replace=holds_a_run(out))
    _print_summary(report.rows, time_passes)
    _echo(f"supernet: {report.supernet_parameters:,} parameters; code in {out / 'supernet.py'}")
    _echo(f"wrote {out}")


def _print_summary(rows: list[dict], with_time: bool) -> None:
    header = f"{'#':>2}  {'pass':<16} {'nodes':>6} {'edges':>7} {'params':>11} {'gates':>7}"
    _echo(header + (f" {'ms':>9}" if with_time else ""))
    for index, row in enumerate(rows, start=1):
        name = row["pass"].split("{")[0]
        line = (f"{index:>2}  {name:<16} {row['nodes']:>6} {row['edges']:>7} "
                f"{row['parameters']:>11,} {row['gates']:>7}")
        _echo(line + (f" {row['seconds'] * 1000:>9.2f}" if with_time else ""))
    if with_time:
        _echo(f"    {'total':<16} {'':>6} {'':>7} {'':>11} {'':>7} "
              f"{sum(r['seconds'] for r in rows) * 1000:>9.2f}")


@app.command("run")
def run_command(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="The search-space spec (YAML)."),
    out: Path = typer.Option(Path("runs/run"), "-o", "--out", help="Output folder."),
    overrides: Optional[List[str]] = SetOption,
    resume: bool = typer.Option(False, help="Continue the run in OUT from its last checkpoint."),
    overwrite: bool = typer.Option(False, help="Start again in an OUT that already holds a run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard",
                                               help="Write TensorBoard events to OUT/tensorboard/ (default: when "
                                               "the tensorboard package is installed)."),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", metavar="URI", help="Log the run to MLflow at this "
                                         "tracking URI too (pip install 'dagir\\[mlflow]')."),
) -> None:
    """The whole method: compile, warm-up, search, post-search passes, fine-tune, evaluate, export.

    Under `torchrun --nproc_per_node=N -m dagir run ...` the run is data parallel over N processes;
    rank 0 alone writes OUT and speaks."""
    from .run_folder import locked_folder, prepare_run_folder
    from .run_job import Run
    from .spec import load_spec
    from .training.distributed import join_world, leave_world

    if resume and overwrite:
        raise UserError("--resume and --overwrite: give one (--resume continues the run in OUT, --overwrite "
                        "starts it again)")
    spec = load_spec(spec_path, overrides or [])
    if mlflow is not None:
        from .training.tracking import check_reachable
        check_reachable(mlflow)  # before OUT is touched
    world = join_world(spec.train.device)
    kept = f"{out} keeps its last checkpoint, if one was written; --resume continues from it"
    with _saying_what_ctrl_c_kept(kept):
        try:
            if not world.main:
                world.agree(None)  # rank 0 checks and prepares OUT; every rank stops if that fails
                Run(spec, out, resume=resume, world=world).execute()
                return
            run = Run(spec, out, resume=resume, progress=progress, echo=_echo, tensorboard=tensorboard, world=world,
                      mlflow=mlflow)

            def check_and_prepare() -> None:
                run.load_data()  # data that fail their checks leave OUT as it was
                prepare_run_folder(spec, out, resume=resume, overwrite=overwrite)
            with locked_folder(out, "run"):  # before anything in OUT is touched
                world.agree(check_and_prepare)
                metrics = run.execute()
        finally:
            leave_world(world)
    _print_metrics(metrics)
    _echo(f"wrote {out}")


def _print_task_metrics(metrics: dict[str, dict[str, float]]) -> None:
    for task, values in metrics.items():
        _echo(f"  {task:<12} " + "  ".join(f"{k}={v:.4f}" for k, v in values.items()))


def _print_metrics(metrics: dict) -> None:
    _echo("test metrics of the compact network:")
    _print_task_metrics(metrics["test"])
    compact, supernet = metrics["compact"], metrics["supernet"]
    _echo(f"  parameters: compact {compact['parameters']:,}  supernet {supernet['parameters']:,}")
    _echo(f"  MACs/sample: compact {compact['macs']['total']:,}  "
          f"(tasks run separately {compact['macs']['separate_total']:,})  supernet {supernet['macs_shared']:,}")
    _echo("  edges kept per task: " + ", ".join(f"{t}={n}" for t, n in compact["edges_per_task"].items()))


@app.command("bench")
def bench_command(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="The search-space spec (YAML)."),
    out: Path = typer.Option(Path("runs/bench"), "-o", "--out", help="Output folder."),
    overrides: Optional[List[str]] = SetOption,
    methods: Optional[str] = typer.Option(None, help="Comma-separated: searched,mtl_nas,single_task,hard_sharing,"
                                          "cross_stitch, or method spec files, or choice files (`choose: [...]`: per seed the "
                                          "candidate best on validation; default: bench.methods of the spec)."),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds, from the spec's seed on."),
    ablations: bool = typer.Option(False, "--ablations", help="The paper's ablations: the searched network, "
                                   "single-task networks, and the search without read-in/out, without flow "
                                   "restriction, without the squeeze loss and without flow-based reduction."),
    resume: bool = typer.Option(False, "--resume", help="Keep the finished methods and seeds in OUT; train "
                                "only the rest (an interrupted searched run continues from its checkpoint)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Train every run again in an OUT that holds a "
                                   "bench's runs or results (they are replaced)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    workers: int = typer.Option(1, "--workers", min=1, help="Run the (method, seed) runs in this many local "
                                "processes, the cores shared among them."),
    executor: str = typer.Option("local", "--executor", help="Where the runs go: 'local' (this machine, "
                                 "--workers processes) or 'ray' (a Ray cluster; pip install 'dagir\\[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="The Ray cluster's address (default: "
                                              "Ray's own environment, RAY_ADDRESS, or a local Ray)."),
    cpus_per_run: float = typer.Option(1.0, "--cpus-per-run", min=0.01, help="CPUs each run asks Ray for."),
    gpus_per_run: float = typer.Option(0.0, "--gpus-per-run", min=0.0, help="GPUs each run asks Ray for."),
) -> None:
    """The searched network against the baselines on the same data: metrics, Δ_MTL, parameters, MACs."""
    from .bench_job import RayRequest, run_bench
    from .spec import load_spec

    from .methods import ABLATIONS

    extra = list(overrides or [])
    if ablations:
        given = [m.strip() for m in methods.split(",") if m.strip()] if methods else ["searched", "single_task"]
        methods = ",".join(dict.fromkeys(given + list(ABLATIONS)))
    if methods is not None:
        names = [name.strip() for name in methods.split(",")]
        if not any(names):
            raise UserError("--methods: names no method (give a comma-separated list, or leave it out for the "
                            "spec's bench.methods)")
        if not all(names):
            raise UserError(f"--methods {methods}: an empty name between commas")
        extra.append(f"bench.methods={json.dumps(names)}")  # JSON is YAML: any file name survives quoted
    made_by_methods = f"--set {extra[-1]}" if methods is not None else None
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds: must be at least 1 (got {seeds})")
        extra.append(f"bench.seeds={seeds}")
    if executor not in ("local", "ray"):
        raise UserError(f"--executor: '{executor}' is not one of local, ray")
    try:
        spec = load_spec(spec_path, extra)
    except SpecError as err:
        if err.file is not None and err.file == made_by_methods:  # the override --methods made: say --methods
            raise SpecError(err.message, file=f"--methods {methods}", field=err.field) from None
        raise
    seed_list = [spec.seed + i for i in range(spec.bench.seeds)]
    ray = RayRequest(ray_address, cpus_per_run, gpus_per_run) if executor == "ray" else None
    with _saying_what_ctrl_c_kept(f"{out} keeps the finished runs and the others' last checkpoints; --resume "
                                  "goes on from them"):
        run_bench(spec, out, methods=spec.bench.methods, seeds=seed_list, progress=progress, echo=_echo,
                  resume=resume, overwrite=overwrite, workers=workers, ray=ray)
    _echo((out / "table.md").read_text())
    _echo(f"wrote {out}")


@app.command("eval")
def eval_command(
    out: Path = typer.Argument(..., metavar="OUT", help="A finished run folder."),
) -> None:
    """Reload a run's exported compact network and evaluate it on the test split."""
    from .evaluate_job import evaluate_run_folder

    report = evaluate_run_folder(out)
    _print_task_metrics(report["test"])
    _echo("matches metrics.json" if report["matches"] else
          f"differs from metrics.json (largest difference {report['largest_difference']:.3g})")
    if not report["matches"]:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    out: Path = typer.Argument(..., metavar="OUT", help="A finished run folder."),
    fmt: str = typer.Option(..., "--format", help="onnx, torchscript or python."),
    target: Path = typer.Option(..., "-o", "--out", help="The file to write."),
    overwrite: bool = typer.Option(False, help="Replace the file if it exists."),
) -> None:
    """Export a run's compact network (ONNX, TorchScript or standalone Python) and check it against PyTorch."""
    from .export_job import export_run

    report = export_run(out, fmt, target, overwrite=overwrite)
    for task, difference in report["max_abs_difference"].items():
        _echo(f"  {task:<12} max |export - pytorch| = {difference:.3g}")
    _echo(f"wrote {report['file']}" + ("" if report["matches"] else " (differs from the PyTorch module)"))
    if not report["matches"]:
        raise typer.Exit(1)


@app.command("report")
def report_command(
    out: Path = typer.Argument(..., metavar="OUT", help="A finished run folder, or a bench folder."),
    target: Optional[Path] = typer.Option(None, "-o", "--out", help="The HTML file (default OUT/report.html)."),
) -> None:
    """One self-contained HTML page of a run or a bench: metrics, sharing, curves, gates, every pass."""
    from .report_job import write_report

    _echo(f"wrote {write_report(out, target)}")


@app.command("passes")
def passes_command() -> None:
    """List the registered passes and their options."""
    from .pass_manager import registered_passes

    from typing import Literal, get_args, get_origin

    def kind(annotation) -> str:
        if get_origin(annotation) is Literal:  # the values it takes
            return " | ".join(str(value) for value in get_args(annotation))
        return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")

    for name, cls in registered_passes().items():
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        _echo(f"{name}{'  (build pass)' if cls.builds else ''}")
        _echo(f"    {summary}")
        for field_name, info in cls.model_fields.items():
            default = info.get_default(call_default_factory=True)
            _echo(f"    {field_name}: {kind(info.annotation)} = {json.dumps(default)}")


@app.command("viz")
def viz_command(
    ir_path: Path = typer.Argument(..., metavar="IR.json", help="An IR dump (OUT/passes/NN-name.json)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output path without suffix "
                                       "(default: beside the IR)."),
    png: bool = typer.Option(False, help="Also render a PNG."),
) -> None:
    """Draw an IR dump with graphviz (DOT always; SVG/PNG when `dot` is installed)."""
    from dagir.backends.graphviz_dot import render, to_dot

    from .ir_io import read_ir
    from .run_folder import output_file

    ir = read_ir(ir_path)
    target = output_file(out) if out is not None else ir_path.with_suffix("")
    written = render(to_dot(ir), target, formats=("svg", "png") if png else ("svg",))
    for path in written:
        _echo(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `dagir` script: maps errors to exit codes.

    Typer reports usage errors itself (exit 2); our own bad-input errors become one line and exit 2.
    """
    try:
        app(args=argv, prog_name="dagir")
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone reports
            typer.echo(f"dagir: error: {err}", err=True)
        sys.exit(2)
    except VerificationError as err:
        typer.echo(f"dagir: internal error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
