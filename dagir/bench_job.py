"""`dagir bench`: every method on the same data, budget and seeds, each through the one `run`.

A method is a spec (DESIGN §10, `dagir.methods`): the paper's search (`searched`, the bench spec
itself), MTL-NAS, the single-task networks, hard sharing, cross-stitch, or a user's own spec file.
For each (method, seed) the bench resolves the method's spec and runs it with `dagir.run_job.Run`
in its own run folder — the same stages, device, precision, checkpoints, resume, metrics and
exports for all. Per seed and method the test metrics, the compact network's parameters and
multiply-accumulates and the training time (warm-up + search + fine-tune) are collected; the table
reports mean ± std over seeds, Δ_MTL against the single-task networks (DESIGN §8), and each
method's per-seed difference from the searched network.

OUT/table.md, table.csv and runs.csv (numbers only), results.json, comparison.png (`dagir.bench_table`), and one run folder per method and seed
(`<method>-seed<seed>`), each with the spec it ran (`spec.resolved.yaml`); a choice (`dagir.choice`) has a folder per
seed holding the network it kept. With `resume`, a method
and seed whose folder holds a finished result of the same spec is not trained again, and an
interrupted run continues from its checkpoint: a long bench can be stopped and taken up again, or
given more seeds.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .choice import Choice, check_choice_folder, choose, read_choice
from .errors import UserError
from .methods import BUILT_IN, method_file, method_name, method_spec
from .pipeline import after_search_pipeline, compile_spec
from .run_folder import (finished_files, holds_a_run, how_it_differs, locked_folder, prepare_run_folder,
                         same_run_spec, write_finished_files)
from .bench_table import summarise, write_results
from .run_job import Run
from .spec import STAGES, Spec

Echo = Callable[[str], None]


def with_seed(spec: Spec, seed: int) -> Spec:
    copy = spec.model_copy(deep=True)
    copy.seed = seed
    copy._source = spec._source
    return copy


def resolve_methods(spec: Spec, methods: Sequence[str]) -> dict[str, Spec]:
    """Every method's spec (a choice's candidates in its place), checked before any training."""
    return bench_plan(spec, methods)[0]


def bench_plan(spec: Spec, methods: Sequence[str]) -> tuple[dict[str, Spec], list[Choice]]:
    """What a bench trains and chooses: every method's spec, checked before any training (its pipelines
    parse and build an IR that verifies), with a choice's candidates (`dagir.choice`) trained as methods
    of their own, and the choices. Names must be distinct; a candidate may also be listed as a method or
    be another choice's candidate (the same built-in or file: it is trained once)."""
    listed: list[tuple[str, bool]] = []  # (a built-in's name or a file's path, whether a choice names it)
    choices: list[Choice] = []
    for method in methods:
        path = None if method in BUILT_IN else method_file(method, spec)
        choice = read_choice(path) if path is not None else None
        if choice is None:
            listed.append((method if path is None else str(path.resolve()), False))
        else:
            choices.append(choice)
            listed += [(candidate, True) for candidate in choice.candidates]
    resolved: dict[str, Spec] = {}
    what: dict[str, str] = {}
    plain: set[str] = set()
    for method, candidate in listed:
        name = method_name(method)
        if name in what and (what[name] != method or (not candidate and name in plain)):
            raise spec.error(("bench", "methods"), f"method {name!r} is named twice")
        if not candidate:
            plain.add(name)
        if name in what:
            continue
        method_of = method_spec(spec, method)
        compile_spec(method_of)  # the method's space builds
        after_search_pipeline(method_of)
        resolved[name], what[name] = method_of, method
    names = [choice.name for choice in choices]
    clash = sorted({name for name in names if names.count(name) > 1} | (set(names) & set(resolved)))
    if clash:
        raise spec.error(("bench", "methods"), f"method {clash[0]!r} is named twice")
    return resolved, choices


def run_method(spec: Spec, out: Path, *, progress: bool, echo: Echo, resume: bool = False) -> dict[str, Any]:
    """One method's `dagir run` in `out`; with `resume`, an interrupted one there continues."""
    resume = resume and (out / "checkpoints" / "latest.pt").is_file()
    run = Run(spec, out, resume=resume, progress=progress, echo=echo)
    with locked_folder(out, "bench run"):
        run.load_data()  # data that fail their checks leave OUT as it was
        prepare_run_folder(spec, out, resume=resume, overwrite=not resume)
        return run_result(run.execute(), spec)


def _run_in_pool(pending: list[tuple[str, int, Spec, Path]], workers: int, *, echo: Echo,
                 resume: bool) -> dict[tuple[str, int], dict[str, Any]]:
    """The pending (method, seed) runs in a pool of `workers` local processes (spawned, each with
    torch limited to its share of the cores: threads fighting over cores slow small runs tenfold).
    Each run writes its own folder, as in a sequential bench, so the table is the same."""
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    threads = max(1, (os.cpu_count() or 1) // workers)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_start_worker, initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(_pooled_run, seeded, folder, resume): (name, seed) for name, seed, seeded, folder in pending}
        for name, seed, _, _ in pending:
            echo(f"== {name}, seed {seed}: queued on {workers} workers")
        for future in as_completed(futures):
            name, seed = futures[future]
            results[(name, seed)] = future.result()  # a worker's UserError is raised here, as in a sequential bench
            echo(f"== {name}, seed {seed}: finished")
    return results


def _limit_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _start_worker(threads: int, bench_pid: int) -> None:
    """A pool worker: torch on its share of the cores, and a watch that ends the worker when the
    bench that started it is gone (killed, say), rather than training on for no one."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == bench_pid:
            time.sleep(1.0)
        os._exit(1)

    _limit_threads(threads)
    threading.Thread(target=watch, name="dagir-bench-watch", daemon=True).start()


def _pooled_run(spec: Spec, folder: Path, resume: bool) -> dict[str, Any]:
    return run_method(spec, folder, progress=False, echo=lambda text: None, resume=resume)


@dataclass(frozen=True)
class RayRequest:
    """Where a bench's runs go on Ray: the cluster (`address`, else Ray's own environment or a
    local Ray) and what each run asks for."""

    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0

    def check(self) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'dagir[ray]'") from None


def _run_on_ray(pending: list[tuple[str, int, Spec, Path]], request: RayRequest, *, echo: Echo,
                resume: bool) -> dict[tuple[str, int], dict[str, Any]]:
    """The pending runs as Ray tasks, each asking for `request.cpus` CPUs and `request.gpus` GPUs,
    each writing its own run folder as a local bench does. A task sends its finished folder back
    (all but the checkpoints), and the bench writes what OUT lacks: on a cluster whose nodes do not
    share OUT's disk, OUT still ends up holding every run, so `--resume` finds them. torch in a task
    uses the CPUs it asked for."""
    import ray

    if not ray.is_initialized():
        ray.init(address=request.address, include_dashboard=False, log_to_driver=False)
    threads = max(1, int(request.cpus))
    remote = ray.remote(num_cpus=request.cpus, num_gpus=request.gpus, max_retries=0)(_ray_run)
    tasks = {remote.remote(seeded, folder, resume, threads): (name, seed) for name, seed, seeded, folder in pending}
    folder_of = {(name, seed): folder for name, seed, _, folder in pending}
    for name, seed, _, _ in pending:
        echo(f"== {name}, seed {seed}: queued on Ray")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    waiting = list(tasks)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        name, seed = tasks[done[0]]
        try:
            results[(name, seed)], files = ray.get(done[0])
        except ray.exceptions.RayTaskError as error:  # a run's UserError, raised here as in a local bench
            cause = error.as_instanceof_cause()
            raise cause if isinstance(cause, UserError) else UserError(f"{name}, seed {seed}: {error}") from None
        copied = write_finished_files(folder_of[(name, seed)], files)
        echo(f"== {name}, seed {seed}: finished" + (f", {len(copied)} files copied back" if copied else ""))
    return results


def _ray_run(spec: Spec, folder: Path, resume: bool, threads: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    _limit_threads(threads)
    return _pooled_run(spec, folder, resume), finished_files(folder)


def run_result(metrics: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """The bench's row for a run, from its metrics.json and its spec: test metrics, size, and the
    budget it spent (epochs and optimiser steps per stage, seconds: in all and for warm-up + search,
    the search's cost, that also in CPU seconds); a choice's (`dagir.choice`) is all its candidates'."""
    seconds, cpu = metrics["stage_seconds"], metrics.get("stage_cpu_seconds")  # older runs recorded none
    return {"test": metrics["test"], "parameters": metrics["compact"]["parameters"],
            "macs": metrics["compact"]["macs"]["total"], "seconds": sum(seconds.values()),
            "search_seconds": seconds.get("warmup", 0.0) + seconds.get("search", 0.0),
            "search_cpu_seconds": cpu.get("warmup", 0.0) + cpu.get("search", 0.0) if cpu else math.nan,
            "cpu_seconds": sum(cpu.values()) if cpu else math.nan,
            "epochs": {stage: getattr(spec.train, stage).epochs for stage in STAGES},
            "steps": sum(metrics["stage_steps"].values()) if "stage_steps" in metrics else math.nan,
            **({**metrics["choice"]["budget"], "kept": metrics["choice"]["kept"]} if "choice" in metrics else {})}


def finished_result(spec: Spec, method: str, out: Path) -> dict[str, Any] | None:
    """The result in `out` if a run of `method` with exactly this spec finished there, else None."""
    metrics, resolved = out / "metrics.json", out / "spec.resolved.yaml"
    if not metrics.is_file():
        return None
    if not resolved.is_file() or not same_run_spec(resolved, spec):
        differs = how_it_differs(resolved, spec) or " (or none recorded)"
        raise UserError(f"{out}: holds a result of a different spec{differs}; resume with the same spec and --set "
                        "options, or use a new output folder")
    try:
        return run_result(json.loads(metrics.read_text()), spec)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{metrics}: not a finished {method} result ({error}); delete the folder to train it again")


def run_bench(spec: Spec, out: Path, *, methods: Sequence[str], seeds: Sequence[int], progress: bool = True,
              echo: Echo = print, resume: bool = False, overwrite: bool = False, workers: int = 1,
              ray: RayRequest | None = None) -> dict[str, Any]:
    """Train every method for every seed (with `resume`, only those not finished in OUT), then write
    the comparison table and plot. The runs go one after another, to `workers` local processes, or
    (`ray`) to a Ray cluster; the table is the same whichever ran them. An OUT that already holds a
    bench's runs or results, or a run, is refused unless `resume` or `overwrite` says what to do with it."""
    resolved, choices = bench_plan(spec, methods)
    for choice in choices:
        for seed in seeds:
            check_choice_folder(out / f"{choice.name}-seed{seed}")
    if ray is not None:
        ray.check()  # before OUT is touched: Ray installed
    with locked_folder(out, "bench"):
        if not (resume or overwrite):
            check_bench_folder(out)
        return _run_all(spec, out, resolved, seeds, progress=progress, echo=echo, resume=resume, workers=workers,
                        ray=ray, choices=choices)


def check_bench_folder(out: Path) -> None:
    """Refuse an OUT a bench would overwrite: one holding a `dagir run`, or a bench's runs or results."""
    if holds_a_run(out):
        raise UserError(f"{out}: holds a dagir run; bench into another folder")
    held = sorted(path.name for path in out.iterdir()
                  if path.name in ("results.json", "table.md") or (path.is_dir() and holds_a_run(path)))
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise UserError(f"{out}: holds a bench's runs or results ({shown}); --resume keeps the finished runs and "
                        "trains the rest, --overwrite trains every run again")


def _run_all(spec: Spec, out: Path, resolved: dict[str, Spec], seeds: Sequence[int], *, progress: bool, echo: Echo,
             resume: bool, workers: int = 1, ray: RayRequest | None = None,
             choices: Sequence[Choice] = ()) -> dict[str, Any]:
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in resolved}
    pending: list[tuple[str, int, Spec, Path]] = []
    for seed in seeds:
        for name, method_of in resolved.items():
            seeded = with_seed(method_of, seed)
            folder = out / f"{name}-seed{seed}"
            finished = finished_result(seeded, name, folder) if resume else None
            if finished is not None:
                echo(f"== {name}, seed {seed}: finished in {folder}, not trained again")
                results[name][seed] = finished
            else:
                pending.append((name, seed, seeded, folder))
    if ray is not None:
        for (name, seed), result in _run_on_ray(pending, ray, echo=echo, resume=resume).items():
            results[name][seed] = result
    elif workers <= 1:
        for name, seed, seeded, folder in pending:
            echo(f"== {name}, seed {seed}")
            results[name][seed] = run_method(seeded, folder, progress=progress, echo=echo, resume=resume)
    else:
        for (name, seed), result in _run_in_pool(pending, workers, echo=echo, resume=resume).items():
            results[name][seed] = result
    for choice in choices:
        names = [method_name(candidate) for candidate in choice.candidates]
        results[choice.name] = {}
        for seed in sorted(set.intersection(*(set(results[name]) for name in names))):
            folder = out / f"{choice.name}-seed{seed}"
            record = choose(names, spec, {name: results[name][seed] for name in names},
                            {name: out / f"{name}-seed{seed}" for name in names}, folder)
            results[choice.name][seed] = run_result(json.loads((folder / "metrics.json").read_text()),
                                                    resolved[record["kept"]])
            echo(f"== {choice.name}, seed {seed}: kept {record['kept']} (validation Δ_MTL "
                 + ", ".join(f"{name} {delta:+.2f}" for name, delta in record["validation_delta_mtl"].items()) + ")")
    results = {name: dict(sorted(by_seed.items())) for name, by_seed in results.items()}
    table = summarise(spec, results)
    write_results(out, spec, table, results)
    return table
