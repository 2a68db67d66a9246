"""A method that chooses, per seed, among other methods by their networks' validation scores (issue 12).

No one search space is the best on every task set: the shared nodes of the paper's space win where
the tasks want one network, MTL-NAS's chains fused by NDDR where each task wants its own
(`examples/levers/README.md`). A *choice* is a method file that names candidate methods instead of
changing the spec:

    # choose_space.yaml
    choose: [searched, levers/combined/cross_task_nddr_matched_multimnist.yaml]

`dagir bench` runs every candidate as a method of its own (its row and folders as usual), then for each
seed keeps the candidate whose compact network scores best on the *validation* split: Δ_MTL on
validation (DESIGN §8's formula) against the first candidate, the first winning ties. The test split is
never read to choose. Its row in the table is the kept network's test metrics and size, with the budget
of every candidate together: what it costs to choose is training them all, so its steps and seconds are
the candidates' sums and its warm-up + search the sums less the kept candidate's fine-tuning.

Its folder `<choice>-seed<N>/` holds the kept run's files (the compact network, its metrics, curves and
spec); its `metrics.json` adds a `choice` section: each candidate's validation Δ, the one kept, the budget. The validation scores are
those of the final stage's kept epoch (the last, or the best under `train.select: best`), read from each
run's `history.json`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .run_folder import write_text
from .spec import STAGES, Spec, SpecSource
from .spec_loader import read_spec_file
from .tasks import delta_mtl, primary_metric

KEY = "choose"


@dataclass(frozen=True)
class Choice:
    """A choice method: its name (the file's stem) and its candidates, as `--methods` would name them."""

    name: str
    candidates: tuple[str, ...]


def read_choice(path: Path) -> Choice | None:
    """The choice `path` holds, or None when it is an ordinary method file. A candidate's path is read
    beside the choice file first; a built-in's name stays as it is."""
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
    resolved = []
    for index, candidate in enumerate(candidates):
        beside = path.parent / candidate
        if beside.is_file():
            candidate = str(beside)
            if read_choice(beside) is not None:
                raise source.error((KEY, index), f"{candidate!r} is itself a choice; name its candidates here")
        resolved.append(candidate)
    return Choice(path.stem, tuple(resolved))


def kept_validation(folder: Path) -> dict[str, dict[str, float]]:
    """The validation metrics of a finished run's network as it was kept: the final stage's selected epoch
    (`train.select: best`), else its last, from the run's `history.json`."""
    try:
        history = json.loads((folder / "history.json").read_text())
        selected = json.loads((folder / "metrics.json").read_text()).get("selected_epoch") or {}
        stage = history[-1]["stage"]
        epoch = selected.get(stage, max(row["epoch"] for row in history if row["stage"] == stage))
        row = next(row for row in history if row["stage"] == stage and row["epoch"] == epoch)
    except (OSError, json.JSONDecodeError, KeyError, IndexError, StopIteration) as error:
        raise UserError(f"{folder}: no validation scores to choose by ({error!r}); train the run again") from None
    metrics: dict[str, dict[str, float]] = {}
    for key, value in row.items():
        split, _, rest = key.partition("/")
        if split == "val":
            task, _, metric = rest.partition("/")
            metrics.setdefault(task, {})[metric] = value
    return metrics


def validation_deltas(spec: Spec, folders: dict[str, Path]) -> dict[str, float]:
    """Each candidate's Δ_MTL on validation against the first candidate (which scores 0)."""
    kinds = {t.name: t.kind for t in spec.tasks}
    metric_names = {t.name: primary_metric(t.kind, t.metric)[0] for t in spec.tasks}
    scores = {name: kept_validation(folder) for name, folder in folders.items()}
    reference = next(iter(scores.values()))
    return {name: delta_mtl(metrics, reference, kinds, metric_names) for name, metrics in scores.items()}


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
    _clear_earlier_choice(out)
    for item in folders[kept].iterdir():
        if item.is_file() and not item.name.startswith(".") and item.name != "metrics.json":
            shutil.copy2(item, out / item.name)
    metrics = json.loads((folders[kept] / "metrics.json").read_text())
    write_text(out / "metrics.json", json.dumps({**metrics, "choice": record}, indent=1))
    return record


def _clear_earlier_choice(out: Path) -> None:
    """Make `out` an empty folder for the choice, removing the files an earlier choice copied there (a
    bench resumed with other candidates' runs may keep another); refuse a folder that is not a choice's."""
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads((out / "metrics.json").read_text()).get("choice")
        except (OSError, json.JSONDecodeError):
            earlier = None
        if earlier is None:
            raise UserError(f"{out}: holds something other than a choice's copy of a run; move it away or use a new "
                            "output folder")
        for item in out.iterdir():
            if item.is_file():
                item.unlink()
    out.mkdir(parents=True, exist_ok=True)
