"""A method that chooses, per seed, among other methods by their networks' validation scores (issue 12).

No one search space is the best on every task set: the shared nodes of the paper's space win where
the tasks want one network, MTL-NAS's chains fused by NDDR where each task wants its own
(`examples/levers/README.md`). A *choice* is a method file that names candidate methods instead of
changing the spec:

    # choose_space.yaml
    choose: [searched, ../levers/combined/cross_task_nddr_matched_multimnist.yaml]

A candidate is a built-in method's name or a method file, its path read beside the choice file.
`dagir bench` runs every candidate as a method of its own (its row and folders as usual), then for each
seed keeps the candidate whose compact network scores best on the *validation* split: Δ_MTL on
validation (DESIGN §8's formula) against the first candidate, the first winning ties. The test split is
never read to choose. Its row in the table is the kept network's test metrics and size, with the budget
of every candidate together: what it costs to choose is training them all, so its epochs, steps and
seconds are the candidates' sums and its warm-up + search the sums less the kept candidate's fine-tuning.

Its folder `<choice>-seed<N>/` holds the kept run's files (the compact network, its curves and spec);
its `metrics.json` adds a `choice` section: each candidate's validation Δ, the one kept, the budget.
A run records its compact network's validation metrics in its `metrics.json` (`validation`); for a run
from before it did, the final stage's kept epoch in `history.json` stands in.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .methods import BUILT_IN
from .run_folder import write_text
from .spec import STAGES, Spec, SpecSource
from .spec_loader import read_spec_file
from .tasks import delta_mtl, primary_metric
from .training.loop import unflatten_metrics

KEY = "choose"


@dataclass(frozen=True)
class Choice:
    """A choice method: its name (the file's stem) and its candidates, as `--methods` would name them."""

    name: str
    candidates: tuple[str, ...]


def is_choice(path: Path) -> bool:
    overlay, _, _ = read_spec_file(path)
    return isinstance(overlay, dict) and KEY in overlay


def read_choice(path: Path) -> Choice | None:
    """The choice `path` holds, or None when it is an ordinary method file."""
    overlay, locations, file = read_spec_file(path)
    if not isinstance(overlay, dict) or KEY not in overlay:
        return None
    source = SpecSource(file, locations)
    extra = sorted(set(overlay) - {KEY})
    if extra:
        raise source.error((extra[0],), f"a choice ('{KEY}') names candidate methods and sets nothing else; "
                                        f"put '{extra[0]}' in a candidate's file")
    candidates = overlay[KEY]
    if not isinstance(candidates, list) or len(candidates) < 2 or not all(isinstance(c, str) for c in candidates):
        raise source.error((KEY,), "must list two or more candidate methods (built-in names or method files)")
    resolved: list[str] = []
    for index, candidate in enumerate(candidates):
        if candidate not in BUILT_IN:
            beside = (path.parent / candidate).resolve()
            if not beside.is_file():
                raise source.error((KEY, index), f"{candidate!r} is neither a built-in method ({', '.join(BUILT_IN)}) "
                                                 f"nor a file beside {path.name}")
            if beside == path.resolve() or is_choice(beside):
                raise source.error((KEY, index), f"{candidate!r} is itself a choice; name its candidates here")
            candidate = str(beside)
        if candidate in resolved:
            raise source.error((KEY, index), f"{candidates[index]!r} is named twice")
        resolved.append(candidate)
    return Choice(path.stem, tuple(resolved))


def kept_validation(folder: Path) -> dict[str, dict[str, float]]:
    """The validation metrics of a finished run's compact network, as the run kept it."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        if "validation" in metrics:
            return metrics["validation"]
        # a run from before runs recorded it: the final stage's kept epoch (under `train.select: best`, its
        # selected one), whose `val/` row is the compact network's where that stage is the fine-tune
        history = json.loads((folder / "history.json").read_text())
        stage = history[-1]["stage"]
        epoch = (metrics.get("selected_epoch") or {}).get(stage, max(r["epoch"] for r in history if r["stage"] == stage))
        row = next(r for r in history if r["stage"] == stage and r["epoch"] == epoch)
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, KeyError, IndexError, StopIteration) as error:
        raise UserError(f"{folder}: no validation scores to choose by ({error!r}); train the run again") from None
    return unflatten_metrics(row, "val")


def validation_deltas(spec: Spec, folders: dict[str, Path]) -> dict[str, float]:
    """Each candidate's Δ_MTL on validation against the first candidate (which scores 0)."""
    kinds = {t.name: t.kind for t in spec.tasks}
    metric_names = {t.name: primary_metric(t.kind, t.metric)[0] for t in spec.tasks}
    scores = {name: kept_validation(folder) for name, folder in folders.items()}
    (first, reference), *_ = scores.items()
    for task, name in metric_names.items():
        value = reference.get(task, {}).get(name)
        if value is None or not math.isfinite(value) or value == 0:
            raise UserError(f"{folders[first]}: validation {task} {name} is {value}, so no candidate's gain over "
                            "it is defined; choose with another first candidate")
    deltas = {}
    for candidate, metrics in scores.items():
        try:
            deltas[candidate] = delta_mtl(metrics, reference, kinds, metric_names)
        except (KeyError, TypeError) as error:
            raise UserError(f"{folders[candidate]}: no validation {error} to choose by") from None
    return deltas


def check_choice_folder(out: Path) -> None:
    """Refuse, before any training, a folder a choice would write that holds something else."""
    if out.is_dir() and any(out.iterdir()) and _earlier_choice(out) is None:
        raise UserError(f"{out}: holds something other than a choice's copy of a run; move it away or use a new "
                        "output folder")


def choose(names: list[str], spec: Spec, runs: dict[str, dict[str, Any]], folders: dict[str, Path],
           out: Path) -> dict[str, Any]:
    """Choose among one seed's finished candidate runs (their bench rows `runs` and folders by name, in
    `names`' order) and write the choice's folder `out`: the kept run's files, its `metrics.json` with a
    `choice` section (each candidate's validation Δ, the one kept, the budget of them all). Returns
    that section."""
    deltas = validation_deltas(spec, {name: folders[name] for name in names})
    kept = max(names, key=lambda name: (deltas[name], -names.index(name)))
    budget = {key: sum(runs[name][key] for name in names) for key in ("seconds", "cpu_seconds", "steps")}
    finetune = {key: runs[kept][key] - runs[kept][f"search_{key}"] for key in ("seconds", "cpu_seconds")}
    budget.update({f"search_{key}": budget[key] - finetune[key] for key in finetune})
    budget["epochs"] = {stage: sum(runs[name]["epochs"][stage] for name in names) for stage in STAGES}
    record = {"candidates": names, "validation_delta_mtl": deltas, "kept": kept, "budget": budget}
    check_choice_folder(out)
    if out.is_dir():
        for item in out.iterdir():
            if item.is_file():
                item.unlink()
    out.mkdir(parents=True, exist_ok=True)
    # metrics.json first: a choice stopped while copying leaves a folder the next one knows as its own
    metrics = json.loads((folders[kept] / "metrics.json").read_text())
    write_text(out / "metrics.json", json.dumps({**metrics, "choice": record}, indent=1))
    for item in folders[kept].iterdir():
        if item.is_file() and not item.name.startswith(".") and item.name != "metrics.json":
            shutil.copy2(item, out / item.name)
    return record


def _earlier_choice(out: Path) -> dict[str, Any] | None:
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics.get("choice") if isinstance(metrics, dict) else None
