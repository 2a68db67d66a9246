"""A choice method (`dagir.choice`): per seed, the candidate best on validation, with the budget of them all."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dagir.choice import choose, kept_validation, read_choice
from dagir.errors import SpecError, UserError
from dagir.spec import load_spec
from test_cli import dagir
from test_run import TINY


def write_run(folder: Path, val_rows: list[dict[str, float]], test: dict[str, float], selected: int | None = None,
              stage: str = "finetune") -> Path:
    """A finished run's folder as far as a choice reads it: its history's validation rows and its metrics."""
    folder.mkdir(parents=True)
    history = [{"stage": stage, "epoch": i + 1, **{f"val/{t}/accuracy": v for t, v in row.items()}}
               for i, row in enumerate(val_rows)]
    (folder / "history.json").write_text(json.dumps(history))
    metrics = {"test": {t: {"accuracy": v} for t, v in test.items()},
               "selected_epoch": {stage: selected} if selected else {}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "compact.py").write_text(f"# {folder.name}\n")
    return folder


def row(seconds: float, search: float, steps: int) -> dict:
    return {"seconds": seconds, "search_seconds": search, "cpu_seconds": seconds / 2, "search_cpu_seconds": search / 2,
            "steps": steps, "epochs": {"warmup": 2, "search": 2, "finetune": 1}}


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return load_spec(path)


def test_the_choice_keeps_the_best_on_validation_whatever_the_test_split_says(tmp_path, spec):
    # b is better on validation (digit +10%, parity -2%: mean +4%) and worse on test: b is kept
    a = write_run(tmp_path / "a", [{"digit": 0.5, "parity": 0.9}], {"digit": 0.9, "parity": 0.9})
    b = write_run(tmp_path / "b", [{"digit": 0.55, "parity": 0.882}], {"digit": 0.1, "parity": 0.1})
    runs = {"a": row(10.0, 6.0, 100), "b": row(20.0, 15.0, 300)}
    record = choose(["a", "b"], spec, runs, {"a": a, "b": b}, tmp_path / "choice")
    assert record["kept"] == "b"
    assert record["validation_delta_mtl"] == pytest.approx({"a": 0.0, "b": 4.0})
    # the budget is both candidates' together, less the kept one's fine-tuning in warm-up + search
    assert record["budget"]["steps"] == 400 and record["budget"]["seconds"] == 30.0
    assert record["budget"]["search_seconds"] == 30.0 - (20.0 - 15.0)
    assert record["budget"]["epochs"] == {"warmup": 4, "search": 4, "finetune": 2}
    written = json.loads((tmp_path / "choice" / "metrics.json").read_text())
    assert written["test"]["digit"]["accuracy"] == 0.1 and written["choice"]["kept"] == "b"
    assert (tmp_path / "choice" / "compact.py").read_text() == "# b\n"


def test_a_tie_keeps_the_first_candidate_and_the_selected_epoch_is_what_counts(tmp_path, spec):
    # c's last epoch is better than a's, but under `select: best` it kept its first epoch, which ties with a
    a = write_run(tmp_path / "a", [{"digit": 0.5, "parity": 0.5}], {"digit": 0.5, "parity": 0.5})
    c = write_run(tmp_path / "c", [{"digit": 0.5, "parity": 0.5}, {"digit": 0.9, "parity": 0.9}],
                  {"digit": 0.9, "parity": 0.9}, selected=1)
    assert kept_validation(c) == {"digit": {"accuracy": 0.5}, "parity": {"accuracy": 0.5}}
    runs = {"a": row(1.0, 1.0, 1), "c": row(1.0, 1.0, 1)}
    assert choose(["a", "c"], spec, runs, {"a": a, "c": c}, tmp_path / "choice")["kept"] == "a"
    # choosing again into the same folder replaces the earlier choice's files
    (tmp_path / "choice" / "stale.txt").write_text("from an earlier choice")
    assert choose(["c", "a"], spec, runs, {"a": a, "c": c}, tmp_path / "choice")["kept"] == "c"
    assert not (tmp_path / "choice" / "stale.txt").exists()


def test_a_choice_never_overwrites_a_folder_it_did_not_write(tmp_path, spec):
    a = write_run(tmp_path / "a", [{"digit": 0.5, "parity": 0.5}], {"digit": 0.5, "parity": 0.5})
    b = write_run(tmp_path / "b", [{"digit": 0.6, "parity": 0.5}], {"digit": 0.5, "parity": 0.5})
    with pytest.raises(UserError, match="other than a choice"):
        choose(["a", "b"], spec, {"a": row(1.0, 1.0, 1), "b": row(1.0, 1.0, 1)}, {"a": a, "b": b}, b)
    assert json.loads((b / "metrics.json").read_text()).get("choice") is None


BAD_CHOICES = [
    ("choose: [searched]\n", "two or more candidate methods", 1),
    ("choose: [searched, hard_sharing]\ntrain: {warmup: {epochs: 1}}\n", "sets nothing else", 2),
    ("choose: [searched, inner.yaml]\n", "is itself a choice", 1),
    ("choose:\n  - searched\n  - choice.yaml\n", "is itself a choice", 3),
    ("choose:\n  - searched\n  - searched\n", "named twice", 3),
    ("choose:\n  - searched\n  - nosuch.yaml\n", "nor a file beside choice.yaml", 3),
]


@pytest.mark.parametrize("text, says, line", BAD_CHOICES)
def test_a_bad_choice_file_is_a_located_error(tmp_path, text, says, line):
    (tmp_path / "inner.yaml").write_text("choose: [searched, hard_sharing]\n")
    path = tmp_path / "choice.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=says) as error:
        read_choice(path)
    assert error.value.line == line and error.value.file == str(path)


def test_a_bad_choice_exits_2_with_its_file_and_line_before_any_training(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    (tmp_path / "choice.yaml").write_text("choose:\n  - searched\n  - nosuch.yaml\n")
    code, _, stderr = dagir("bench", str(spec), "-o", str(tmp_path / "bench"), "--seeds", "1", "--no-progress",
                            "--methods", "searched,choice.yaml")
    assert code == 2 and "choice.yaml:3" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "bench").exists()


def test_a_candidate_listed_as_a_method_too_is_trained_once_whatever_the_order(tmp_path, spec):
    from dagir.bench_job import bench_plan

    (tmp_path / "wide.yaml").write_text("extends: hard_sharing\nnetwork: {central: {channels: [24, 24]}}\n")
    (tmp_path / "choice.yaml").write_text("choose: [searched, wide.yaml]\n")
    (tmp_path / "other.yaml").write_text("choose: [wide.yaml, hard_sharing]\n")
    for order in (["choice.yaml", "searched", "wide.yaml", "other.yaml"], ["wide.yaml", "other.yaml", "choice.yaml"]):
        methods, choices = bench_plan(spec, [str(tmp_path / m) if m.endswith(".yaml") else m for m in order])
        assert sorted(methods) == ["hard_sharing", "searched", "wide"], order
        assert sorted(c.name for c in choices) == ["choice", "other"]
    with pytest.raises(SpecError, match="'searched' is named twice"):
        bench_plan(spec, ["searched", str(tmp_path / "choice.yaml"), "searched"])


def test_a_first_candidate_scoring_zero_on_validation_is_a_clear_error(tmp_path, spec):
    a = write_run(tmp_path / "a", [{"digit": 0.0, "parity": 0.5}], {"digit": 0.5, "parity": 0.5})
    b = write_run(tmp_path / "b", [{"digit": 0.6, "parity": 0.5}], {"digit": 0.5, "parity": 0.5})
    with pytest.raises(UserError, match="validation digit accuracy is 0.0"):
        choose(["a", "b"], spec, {"a": row(1.0, 1.0, 1), "b": row(1.0, 1.0, 1)}, {"a": a, "b": b}, tmp_path / "c")


def test_a_folder_that_is_not_a_choice_is_refused_before_any_training(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    (tmp_path / "choice.yaml").write_text("choose: [searched, hard_sharing]\n")
    mine = tmp_path / "bench" / "choice-seed3" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    code, _, stderr = dagir("bench", str(spec), "-o", str(tmp_path / "bench"), "--seeds", "1", "--no-progress",
                            "--methods", "choice.yaml")
    assert code == 2 and "other than a choice" in stderr
    assert mine.read_text() == "mine" and not (tmp_path / "bench" / "searched-seed3").exists()


def test_a_method_file_is_not_a_choice(tmp_path):
    path = tmp_path / "lever.yaml"
    path.write_text("train: {warmup: {epochs: 1}}\n")
    assert read_choice(path) is None


def test_a_bench_runs_a_choices_candidates_and_keeps_one_per_seed(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    (tmp_path / "wide.yaml").write_text("extends: hard_sharing\nnetwork: {central: {channels: [24, 24]}}\n")
    (tmp_path / "choice.yaml").write_text("choose: [searched, wide.yaml]\n")
    out = tmp_path / "bench"
    code, stdout, stderr = dagir("bench", str(spec), "-o", str(out), "--seeds", "2", "--no-progress",
                                 "--methods", "searched,choice.yaml")
    assert code == 0, stderr
    per_seed = {(r["method"], r["seed"]): r for r in csv.DictReader((out / "runs.csv").open())}
    assert {method for method, _ in per_seed} == {"searched", "wide", "choice"}
    for seed in ("3", "4"):
        # the oracle: each candidate's last validation row, the mean relative gain over searched's
        last = {name: json.loads((out / f"{name}-seed{seed}" / "history.json").read_text())[-1]
                for name in ("searched", "wide")}
        gain = sum((last["wide"][f"val/{t}/accuracy"] - last["searched"][f"val/{t}/accuracy"])
                   / last["searched"][f"val/{t}/accuracy"] for t in ("digit", "parity")) / 2
        kept = "wide" if gain > 0 else "searched"
        for name in ("searched", "wide"):  # the compact network's validation, recorded: the last epoch's here
            recorded = json.loads((out / f"{name}-seed{seed}" / "metrics.json").read_text())["validation"]
            assert {t: recorded[t]["accuracy"] for t in ("digit", "parity")} == pytest.approx(
                {t: last[name][f"val/{t}/accuracy"] for t in ("digit", "parity")})
        written = json.loads((out / f"choice-seed{seed}" / "metrics.json").read_text())
        assert written["choice"]["kept"] == kept, written["choice"]
        assert written["test"] == json.loads((out / f"{kept}-seed{seed}" / "metrics.json").read_text())["test"]
        assert (out / f"choice-seed{seed}" / "compact.safetensors").is_file()
        choice, candidates = per_seed[("choice", seed)], [per_seed[(n, seed)] for n in ("searched", "wide")]
        assert int(choice["steps"]) == sum(int(c["steps"]) for c in candidates)
        assert float(choice["seconds"]) == pytest.approx(sum(float(c["seconds"]) for c in candidates))
        kept_finetune = float(per_seed[(kept, seed)]["seconds"]) - float(per_seed[(kept, seed)]["search_seconds"])
        assert float(choice["search_seconds"]) == pytest.approx(float(choice["seconds"]) - kept_finetune)
        assert choice["parameters"] == per_seed[(kept, seed)]["parameters"]
    assert "`choice` kept" in (out / "table.md").read_text()


def test_a_choice_named_like_a_method_is_refused(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    (tmp_path / "hard_sharing.yaml").write_text("choose: [searched, single_task]\n")
    code, _, stderr = dagir("bench", str(spec), "-o", str(tmp_path / "bench"), "--seeds", "1", "--no-progress",
                            "--methods", f"hard_sharing,{tmp_path / 'hard_sharing.yaml'}")
    assert code == 2 and "named twice" in stderr and "Traceback" not in stderr


CHOICE_FILES = {"space_multimnist.yaml": "multimnist.yaml", "space_digits_images.yaml": "digits_images.yaml",
                "space_tabular.yaml": "mmoe_synthetic.yaml", "space_small_tables.yaml": "penguins.yaml",
                "restarts.yaml": "penguins.yaml", "cross_stitch_restarts.yaml": "penguins.yaml"}


def test_every_example_choice_resolves_its_candidates_on_the_spec_it_is_written_for():
    from dagir.bench_job import bench_plan

    examples = Path(__file__).parent.parent / "examples"
    files = sorted((examples / "choices").glob("*.yaml"))
    assert sorted(path.name for path in files) == sorted(CHOICE_FILES)
    for path in files:
        methods, choices = bench_plan(load_spec(examples / CHOICE_FILES[path.name]), [str(path)])
        assert [choice.name for choice in choices] == [path.stem]
        assert len(methods) == 3 and ("searched" in methods or "cross_stitch" in methods), path.name
        if path.stem.startswith("space_"):
            assert any((m.pipeline.before_search or [""])[0].startswith("build-cross-task")
                       for m in methods.values()), path.name


def test_a_restart_draws_other_weights_on_the_same_data(tmp_path):
    from safetensors.torch import load_file

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    (tmp_path / "again.yaml").write_text("train: {restart: 1}\n")
    out = tmp_path / "bench"
    code, _, stderr = dagir("bench", str(spec), "-o", str(out), "--seeds", "1", "--no-progress",
                            "--methods", "searched,again.yaml")
    assert code == 0, stderr
    first, again = (load_file(out / f"{name}-seed3" / "compact.safetensors") for name in ("searched", "again"))
    assert any(not first[key].equal(again[key]) for key in first.keys() & again.keys())
    # the same data: the two runs' specs differ in the restart alone, and the split is drawn from the spec's seed
    differ = {key for key in flat(out / "searched-seed3") ^ flat(out / "again-seed3")}
    assert {key for key, _ in differ} == {"train.restart"}


def flat(folder: Path) -> set[tuple[str, str]]:
    import yaml

    def walk(node, prefix=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], repr(node)
    return set(walk(yaml.safe_load((folder / "spec.resolved.yaml").read_text())))
