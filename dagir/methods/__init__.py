"""Methods are specs (DESIGN §10): what `dagir bench` compares, each a spec run by the one `run`.

A method is a partial spec laid over the bench's spec: the same data, tasks and seed, its own
build pass, decisions, strategy and stages. `searched` is the bench spec itself (the paper's
method). The built-in ones are the YAML files beside this module — `mtl_nas`, `mtnas`, `mmoe`,
`single_task`, `hard_sharing`, `cross_stitch`, and the paper's ablations of its own method (`ABLATIONS`:
`no_read_io`, `no_flow_restriction`, `no_squeeze`, `no_flow_reduction`, each the bench spec with one
part switched off; `dagir bench --ablations` runs them) — and a user's own method is a file of the
same form, named by its path in `--methods` or `bench.methods` (its name in the table is the file's stem):

    # my_method.yaml: hard sharing with a wider trunk
    budget: one-stage
    network: {central: {channels: [32, 64, 96]}}
    pipeline: {before_search: [build-hard-sharing, legalize-types, attach-gates],
               after_search: [discretize, share-states]}

or one built-in method changed: `extends: hard_sharing` and then only what differs (here the `network`
line), laid over the built-in's file as that file is laid over the bench spec.

`budget` says how the bench spec's epochs (warm-up + search + fine-tune, passes over the training
set) are spent, so every method gets the same number: `same` (as the merged spec says), `one-stage`
(all of them in the first stage, for methods without decisions), `search-takes-finetune` (the
fine-tune epochs go to the search). Whatever the budget, a method's last stage follows the
learning-rate schedule of the bench spec's last stage unless the method sets its own, so where the
bench spec anneals its fine-tune every method's training ends annealed. A method may not set
`data`, `tasks`, `seed` or `bench`. A method without the `fit-budget` pass after search has no
`search.budget` (the bench spec's budget is the searched network's).

>>> sorted(set(BUILT_IN) - set(ABLATIONS))
['cross_stitch', 'hard_sharing', 'mmoe', 'mtl_nas', 'mtnas', 'searched', 'single_task']
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..pass_manager import names_pass
from ..spec import Spec, SpecSource, validate_spec
from ..spec_checks import check_spec_semantics
from ..spec_loader import read_spec_file

HERE = Path(__file__).parent
ABLATIONS: tuple[str, ...] = ("no_read_io", "no_flow_restriction", "no_squeeze", "no_flow_reduction")
BUILT_IN: tuple[str, ...] = ("searched", "mtl_nas", "mtnas", "mmoe", "single_task", "hard_sharing",
                             "cross_stitch") + ABLATIONS
BUDGETS: tuple[str, ...] = ("same", "one-stage", "search-takes-finetune")
FIXED_SECTIONS: tuple[str, ...] = ("data", "tasks", "seed", "bench")


def method_file(method: str, spec: Spec) -> Path | None:
    """The file of `method`: a built-in's, or a user's path (as given, or beside the bench spec);
    None for `searched`. Raises a `SpecError` naming the method when there is none."""
    if method == "searched":
        return None
    if method in BUILT_IN:
        return HERE / f"{method}.yaml"
    candidates = [Path(method)]
    if spec._source is not None and spec._source.file:
        candidates.append(Path(spec._source.file).parent / method)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise spec.error(("bench", "methods"), f"unknown method {method!r}: neither built in "
                                           f"({', '.join(BUILT_IN)}) nor a spec file")


def method_name(method: str) -> str:
    """The name a method goes by in tables and folders: a built-in's name, a file's stem."""
    return method if method in BUILT_IN else Path(method).stem


def method_spec(spec: Spec, method: str) -> Spec:
    """The spec `method` runs on `spec`'s data, tasks and seed, with its epoch budget applied."""
    path = method_file(method, spec)
    if path is None:
        return spec
    overlay, locations, file = read_spec_file(path)
    source = SpecSource(file, locations)
    if not isinstance(overlay, dict):
        raise SpecError("a method is a mapping of spec sections (pipeline, search, train, ...)", file=file, line=1)
    overlay = _extended(dict(overlay), source)
    budget = overlay.pop("budget", "same")
    if budget not in BUDGETS:
        raise source.error(("budget",), f"must be one of {', '.join(BUDGETS)} (got {budget!r})")
    for section in FIXED_SECTIONS:
        if section in overlay:
            raise source.error((section,), f"a method may not set '{section}': every method of a bench "
                                           "runs on the bench spec's data, tasks and seeds")
    merged = _merge(spec.resolved_dict(), overlay)
    _spend(merged, spec, budget)
    _drop_unfitted_budget(merged)
    resolved = validate_spec(merged, source)
    if _end_as_the_bench_ends(merged, overlay, spec, resolved.train.final_stage()):
        resolved = validate_spec(merged, source)
    if _price_the_bench_spec_single_task(merged, spec, resolved):
        resolved = validate_spec(merged, source)
    resolved._source = source
    check_spec_semantics(resolved, source, methods=False)
    return resolved


def _extended(overlay: dict[str, Any], source: SpecSource) -> dict[str, Any]:
    """A method file that `extends` a built-in method: the built-in's file with this one laid over it."""
    base = overlay.pop("extends", None)
    if base is None:
        return overlay
    if base not in BUILT_IN:
        raise source.error(("extends",), f"must name a built-in method ({', '.join(BUILT_IN)}), not {base!r}")
    if base == "searched":
        return overlay
    inherited, _, _ = read_spec_file(HERE / f"{base}.yaml")
    return _merge(inherited, overlay)


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` laid over `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _end_as_the_bench_ends(merged: dict[str, Any], overlay: dict[str, Any], spec: Spec, last: str) -> bool:
    """Give the method's last training stage (`last`) the learning-rate schedule the bench spec's
    last stage has, unless the method sets that stage's schedule itself; True if that changed it.
    So every method's training ends the same way: where the bench spec anneals its fine-tune (as
    `lr_schedule: auto`, the default, does), a one-stage baseline anneals its one stage and MTL-NAS
    its search, and the searched network's annealing is not an advantage the others lack."""
    schedule = getattr(spec.train, spec.train.final_stage()).lr_schedule
    if "lr_schedule" in overlay.get("train", {}).get(last, {}) or merged["train"][last]["lr_schedule"] == schedule:
        return False
    merged["train"][last]["lr_schedule"] = schedule
    return True


def _drop_unfitted_budget(merged: dict[str, Any]) -> None:
    """A method whose after-search pipeline has no `fit-budget` pass (the baselines, single-task
    networks) has no cost budget: the bench spec's `search.budget` is the searched network's."""
    after = merged.get("pipeline", {}).get("after_search")
    if after is not None and not names_pass(after, "fit-budget"):
        merged["search"]["budget"] = {"macs": None, "parameters": None}


def _price_the_bench_spec_single_task(merged: dict[str, Any], spec: Spec, resolved: Spec) -> bool:
    """A budget of `single_task` is what the bench spec's single-task networks cost (the bench's
    single_task row). A method that changes the layers (other widths, another space) would price its
    own single-task networks instead, so there the bench spec's figures are written in as numbers;
    where the two agree the method keeps `single_task`. True if `merged` changed."""
    from ..pipeline import single_task_cost

    budget = merged["search"]["budget"]
    relative = [name for name in ("macs", "parameters") if budget.get(name) == "single_task"]
    if not relative:
        return False
    bench, own = single_task_cost(spec), single_task_cost(resolved)
    if all(bench[name] == own[name] for name in relative):
        return False
    budget.update({name: bench[name] for name in relative})
    return True


def _spend(merged: dict[str, Any], spec: Spec, budget: str) -> None:
    """Give the method the bench spec's epochs, spent as `budget` says."""
    train = spec.train
    if budget == "one-stage":
        merged["train"]["warmup"]["epochs"] = train.warmup.epochs + train.search.epochs + train.finetune.epochs
        merged["train"]["search"]["epochs"] = 0
        merged["train"]["finetune"]["epochs"] = 0
    elif budget == "search-takes-finetune":
        merged["train"]["search"]["epochs"] = train.search.epochs + train.finetune.epochs
        merged["train"]["finetune"]["epochs"] = 0
