"""Users' own data with no code (DESIGN §11): the `arrays` format, read from files the tests write."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import dagir
from test_run import run_quietly

from dagir.datasets import load_dataset
from dagir.datasets.splits import MappedRows
from dagir.errors import SpecError, UserError
from dagir.spec import load_spec

SPEC = """\
name: mine
data: {{dataset: {dataset}, root: {root}, batch_size: 64}}
tasks:
  - {{name: label, kind: classification, classes: 2}}
  - {{name: target, kind: regression}}
network:
  stem: {{channels: 16}}
  central: {{nodes: 3, stages: 1, channels: 16, edge_op: mlp}}
  heads: {{hidden: 16}}
train:
  warmup: {{epochs: 4, lr: 0.01}}
  search: {{epochs: 2, lr: 0.01}}
  finetune: {{epochs: 4, lr: 0.01}}
  device: cpu
"""


def planted(rows: int = 1200, seed: int = 0) -> dict[str, np.ndarray]:
    """A linear rule for a classification task and a linear target for a regression task."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(rows, 10)).astype(np.float32)
    return {"inputs": inputs, "label": (inputs @ rng.normal(size=10) > 0).astype(np.int64),
            "target": (inputs @ rng.normal(size=10)).astype(np.float32)}


def write_spec(tmp_path: Path, root: Path, extra: str = "") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(root=root, dataset="table" if root.suffix in (".csv", ".parquet") else "arrays") + extra)
    return spec


@pytest.mark.parametrize("layout", ["npz", "npy-folder"])
def test_a_run_on_arrays_learns_the_planted_rules(tmp_path, layout):
    arrays = planted()
    if layout == "npz":
        root = tmp_path / "data.npz"
        np.savez(root, **arrays)
    else:
        root = tmp_path / "data"
        root.mkdir()
        for name, values in arrays.items():
            np.save(root / f"{name}.npy", values)
    metrics = run_quietly(write_spec(tmp_path, root), tmp_path / "out")
    assert metrics["test"]["label"]["accuracy"] > 0.85
    assert metrics["test"]["target"]["mae"] < 0.25 * float(arrays["target"].std())


def npy_folder(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    for name, values in arrays.items():
        np.save(folder / f"{name}.npy", values)
    return folder


def test_streamed_inputs_stay_on_disk_and_train_exactly_as_in_memory(tmp_path):
    root = npy_folder(tmp_path / "data", planted(rows=600))
    streamed = load_dataset("arrays", {"in_memory": False}, str(root), val_split=0.1, seed=3)
    held = load_dataset("arrays", {"in_memory": True}, str(root), val_split=0.1, seed=3)
    assert isinstance(streamed.train.inputs, MappedRows) and isinstance(held.train.inputs, torch.Tensor)
    rest, part = streamed.train.hold_out(0.25, seed=1)
    assert isinstance(part.inputs, MappedRows)  # holding out a search split reads nothing
    expected_rest, expected_part = held.train.hold_out(0.25, seed=1)
    assert torch.equal(part.inputs[slice(0, len(part))], expected_part.inputs)
    generator = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    for (x, y), (ex, ey) in zip(rest.batches(64, shuffle=True, generator=generator()),
                                expected_rest.batches(64, shuffle=True, generator=generator()), strict=True):
        assert torch.equal(x, ex) and torch.equal(y["label"], ey["label"])
    spec = write_spec(tmp_path, root)
    runs = {mode: run_quietly(spec, tmp_path / mode, overrides=[f"data.options.in_memory={mode}"])
            for mode in ("true", "false")}
    assert runs["true"]["test"] == runs["false"]["test"]


def test_a_nan_deep_in_a_streamed_file_is_found_at_its_row(tmp_path):
    from dagir.datasets.arrays import ArraySource, _check_finite
    inputs = np.ones((5000, 4), dtype=np.float32)
    inputs[4321, 2] = np.nan
    source = ArraySource(str(npy_folder(tmp_path / "data", {"inputs": inputs})))
    with pytest.raises(UserError, match="row 4321 holds NaN"):
        _check_finite(source, "inputs", source.read("inputs"), chunk_bytes=1000)


def test_in_memory_takes_only_auto_true_or_false(tmp_path):
    spec = write_spec(tmp_path, npy_folder(tmp_path / "data", planted(rows=50)),
                      "").read_text().replace("batch_size: 64", "batch_size: 64, options: {in_memory: 1}")
    (tmp_path / "spec.yaml").write_text(spec)
    with pytest.raises(SpecError, match="data.options.in_memory.*must be one of auto, True, False"):
        load_spec(tmp_path / "spec.yaml")


def test_the_shape_kinds_and_classes_come_from_the_files(tmp_path):
    root = tmp_path / "data.npz"
    np.savez(root, **planted(rows=50))
    spec = load_spec(write_spec(tmp_path, root))
    from dagir.spec import input_shape
    assert input_shape(spec) == (10,)
    data = load_dataset("arrays", {}, str(root), val_split=0.2, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)
    assert data.task_kinds == {"label": "classification", "target": "regression"}
    assert data.train.targets["target"].shape == (30, 1)


def test_a_split_array_fixes_the_splits(tmp_path):
    arrays = planted(rows=12)
    arrays["split"] = np.array(["train"] * 8 + ["val"] * 2 + ["test"] * 2)
    np.savez(tmp_path / "data.npz", **arrays)
    data = load_dataset("arrays", {}, str(tmp_path / "data.npz"))
    assert data.test.source_ids[:, 0].tolist() == [10, 11] and len(data.train) == 8


def bad(tmp_path: Path, **changes) -> Path:
    arrays = planted(rows=40)
    arrays.update(changes)
    arrays = {name: value for name, value in arrays.items() if value is not None}
    np.savez(tmp_path / "data.npz", **arrays)
    return tmp_path / "data.npz"


@pytest.mark.parametrize("changes, message", [
    ({"target": None}, "tasks.1.name: data set 'arrays' has no task 'target'"),
    ({"label": np.zeros(39, dtype=np.int64)}, "(array 'label'): has 39 rows, but 'inputs' has 40"),
    ({"label": np.array([0, 1, -3] + [0] * 37)}, "(array 'label'): row 2 has label -3"),
    ({"label": np.array([0, 1, 4] + [0] * 37)}, "tasks.0.classes: task 'label' has labels up to 4 in data set "
                                                "'arrays' (classes are 0..K-1): classes must be at least 5 (got 2)"),
    ({"inputs": None}, "no array 'inputs' for the inputs"),
    ({"label": np.array([0.0, 1.0] * 20)}, "tasks.0.kind: task 'label' is regression in data set 'arrays', not "
                                         "classification (a float array is a regression target; save integer labels"),
    ({"target": np.zeros((40, 3), dtype=np.float32)}, "a task array is integer labels [N] or a float target"),
    ({"split": np.array(["train"] * 39 + ["dev"])}, None),  # a bad split is found when the data is read
])
def test_bad_arrays_are_rejected_when_the_spec_is_loaded(tmp_path, changes, message):
    spec = write_spec(tmp_path, bad(tmp_path, **changes))
    if message is None:
        load_spec(spec)
        return
    with pytest.raises(UserError) as caught:
        load_spec(spec)
    assert message in str(caught.value)


@pytest.mark.parametrize("changes, message", [
    ({"inputs": np.where(np.arange(400).reshape(40, 10) == 73, np.nan, 1.0).astype(np.float32)},
     "(array 'inputs'): row 7 holds NaN or infinity"),
    ({"target": np.where(np.arange(40) == 5, np.inf, 1.0).astype(np.float32)}, "(array 'target'): row 5 holds NaN"),
    ({"split": np.array(["train"] * 39 + ["dev"])}, "(array 'split'): row 39 has split 'dev'"),
])
def test_bad_values_exit_2_naming_the_array_and_row_before_training(tmp_path, changes, message):
    spec = write_spec(tmp_path, bad(tmp_path, **changes))
    code, _, stderr = dagir("run", str(spec), "-o", str(tmp_path / "out"), "--no-progress")
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [".dagir.lock"]  # nothing written


def test_bad_values_leave_a_finished_run_and_bench_as_they_were(tmp_path):
    """`--overwrite` of a finished run (or bench) with data that fail their checks is refused before
    the folder is touched: its results, checkpoint and spec stay."""
    good = write_spec(tmp_path, bad(tmp_path))
    quick = ["--set", "train.warmup.epochs=1", "--set", "train.search.epochs=1", "--set", "train.finetune.epochs=1"]
    for command in (["run"], ["bench", "--seeds", "1", "--methods", "searched,hard_sharing"]):
        out = tmp_path / command[0]
        code, _, stderr = dagir(command[0], str(good), "-o", str(out), "--no-progress", *command[1:], *quick)
        assert code == 0, stderr
        before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name != ".dagir.lock"}
        (tmp_path / "bad").mkdir(exist_ok=True)
        nan = np.where(np.arange(400).reshape(40, 10) == 73, np.nan, 1.0).astype(np.float32)
        spoilt = write_spec(tmp_path / "bad", bad(tmp_path / "bad", inputs=nan))
        code, _, stderr = dagir(command[0], str(spoilt), "-o", str(out), "--no-progress", "--overwrite",
                                *command[1:], *quick)
        assert code == 2 and "row 7 holds NaN" in stderr and "Traceback" not in stderr, stderr
        after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name != ".dagir.lock"}
        assert after == before, command[0]


def test_a_root_that_is_not_arrays(tmp_path):
    (tmp_path / "data.npz").write_text("not an archive")
    with pytest.raises(SpecError, match="not an .npz file"):
        load_spec(write_spec(tmp_path, tmp_path / "data.npz"))
    with pytest.raises(SpecError, match=r"data.root: 'file or folder' .*does not exist|does not exist"):
        load_spec(write_spec(tmp_path, tmp_path / "nothing.npz"))


# -- table ----------------------------------------------------------------------------------------
def write_table(path: Path, rows: int = 1500, seed: int = 1, edit=None) -> Path:
    """A CSV with five number features and a text one; a linear rule (text labels) and a linear target."""
    import csv
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    colour = rng.choice(["red", "green", "blue"], size=rows)
    shift = np.select([colour == "red", colour == "green"], [1.5, -1.5], 0.0)
    lines = [["a", "b", "c", "d", "e", "colour", "label", "target"]] + [
        [*(f"{v:.5f}" for v in x[i]), colour[i], "yes" if x[i] @ [1, -1, 0.5, 0, 2] + shift[i] > 0 else "no",
         f"{x[i] @ [0.5, 0.5, -1, 1, 0] + 2 * shift[i]:.5f}"] for i in range(rows)]
    if edit is not None:
        edit(lines)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(lines)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_run_on_a_table_learns_the_planted_rules(tmp_path, suffix):
    root = write_table(tmp_path / "t.csv")
    root = as_parquet(root) if suffix == ".parquet" else root
    spec = write_spec(tmp_path, root)
    from dagir.spec import input_shape
    assert input_shape(load_spec(spec)) == (8,)  # five numbers and a one-hot of three colours
    metrics = run_quietly(spec, tmp_path / "out")
    assert metrics["test"]["label"]["accuracy"] > 0.85
    assert metrics["test"]["target"]["mae"] < 0.5


def test_table_features_are_standardised_with_the_training_split_only(tmp_path):
    root = write_table(tmp_path / "t.csv", rows=200)
    data = load_dataset("table", {}, str(root), val_split=0.2, seed=0, tasks=["label", "target"])
    train = data.train.inputs[:, :5]
    assert torch_close(train.mean(0), 0.0) and torch_close(train.std(0, unbiased=False), 1.0)
    assert not torch_close(data.test.inputs[:, :5].mean(0), 0.0)
    assert set(data.train.inputs[:, 5:].sum(1).tolist()) == {1.0}  # one colour each
    assert data.task_kinds == {"label": "classification", "target": "regression"}
    assert data.train.targets["label"].dtype.is_floating_point is False


def torch_close(values, expected: float) -> bool:
    return bool((values - expected).abs().max() < 1e-4)


def edit_cell(row: int, column: int, value: str):
    def edit(lines):
        lines[row][column] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (edit_cell(5, 2, ""), "t.csv:6: column 'c' has no value"),
    (edit_cell(9, 6, "NA"), "t.csv:10: column 'label' has no value"),
    (lambda lines: lines[3].append("1.0"), "t.csv:4: 9 values, but the header names 8 columns"),
    (lambda lines: [line.pop(7) for line in lines],
     "t.csv has no column 'target' (a task's targets are the column named after it; columns: a, b, "
     "c, d, e, colour, label)"),
    (edit_cell(4, 1, "1.2.3"), "t.csv:5: column 'b' holds numbers, but '1.2.3' is not one (1 such cell(s))"),
    (lambda lines: [line.__setitem__(5, f"id{i}") for i, line in enumerate(lines[1:])],
     "column 'colour' holds a different text in every row (an identifier?)"),
])
def test_bad_tables_are_rejected_when_the_spec_is_loaded(tmp_path, edit, message):
    spec = write_spec(tmp_path, write_table(tmp_path / "t.csv", rows=30, edit=edit))
    with pytest.raises(UserError) as caught:
        load_spec(spec)
    assert message in str(caught.value)
    if "has no column" in message:
        assert ": tasks.1.name: " in str(caught.value)  # the spec's field, not data.root


def test_a_task_column_is_no_input_and_a_byte_order_mark_no_name(tmp_path):
    from dagir.spec import input_shape
    root = write_table(tmp_path / "t.csv", rows=30)
    spec = write_spec(tmp_path, root)
    with pytest.raises(UserError, match="features names 'target', the column of the task of that name"):
        load_spec(spec, ["data.options.features=[a, b, target]"])
    root.write_text(root.read_text(), encoding="utf-8-sig")  # as Excel saves a CSV: its first name starts with U+FEFF
    assert input_shape(load_spec(spec)) == (8,)


def test_classes_left_out_are_read_from_the_data_and_recorded(tmp_path):
    import yaml
    spec = tmp_path / "spec.yaml"
    root = write_table(tmp_path / "t.csv", rows=30)
    spec.write_text(SPEC.format(root=root, dataset="table").replace("classes: 2}", "}"))
    loaded = load_spec(spec)
    assert loaded.tasks[0].classes == len(set(loaded_labels(root)))
    assert yaml.safe_load(loaded.resolved_yaml())["tasks"][0]["classes"] == loaded.tasks[0].classes
    default = tmp_path / "mm.yaml"  # a built-in data set knows its tasks' classes too
    default.write_text(Path("examples/multimnist.yaml").read_text().replace(", classes: 10}", "}"))
    assert [task.classes for task in load_spec(default).tasks] == [10, 10, None]


def loaded_labels(root: Path) -> list[str]:
    import csv
    with open(root, newline="") as handle:
        return [row["label"] for row in csv.DictReader(handle)]


def test_a_kind_the_table_does_not_give_says_how_to_get_it(tmp_path):
    spec = write_spec(tmp_path, write_table(tmp_path / "t.csv", rows=30))
    with pytest.raises(SpecError, match=r"tasks.0.kind: task 'label' is classification in data set 'table', not "
                                        r"regression \(its values are text or whole numbers, read as class labels"):
        load_spec(spec, ["tasks.0.kind=regression", "tasks.0.classes=null"])


def test_a_table_too_small_for_its_splits_is_refused_before_training(tmp_path):
    spec = write_spec(tmp_path, write_table(tmp_path / "t.csv", rows=4))
    code, _, stderr = dagir("run", str(spec), "-o", str(tmp_path / "out"), "--no-progress")
    assert code == 2 and "data.val_split: the validation split is empty (4 sample(s) in all)" in stderr, stderr
    assert not (tmp_path / "out" / "spec.resolved.yaml").exists()


def as_parquet(csv_path: Path, blank: tuple[int, str] | None = None) -> Path:
    """The CSV as a typed Parquet file (numbers as float64, text as strings); `blank` = (row, column) made null."""
    pyarrow = pytest.importorskip("pyarrow")
    from pyarrow import csv, parquet
    table = csv.read_csv(csv_path)
    if blank is not None:
        row, name = blank
        values = table.column(name).to_pylist()
        values[row] = None
        table = table.set_column(table.column_names.index(name), name, pyarrow.array(values))
    parquet.write_table(table, csv_path.with_suffix(".parquet"))
    return csv_path.with_suffix(".parquet")


def test_a_parquet_table_reads_as_its_csv(tmp_path):
    csv_path = write_table(tmp_path / "t.csv", rows=200)
    from_csv = load_dataset("table", {}, str(csv_path), val_split=0.2, seed=0, tasks=["label", "target"])
    from_parquet = load_dataset("table", {}, str(as_parquet(csv_path)), val_split=0.2, seed=0,
                                tasks=["label", "target"])
    for part in ("train", "val", "test"):
        expected, got = from_csv.splits()[part], from_parquet.splits()[part]
        assert torch.equal(got.inputs, expected.inputs)
        assert all(torch.equal(got.targets[t], expected.targets[t]) for t in ("label", "target"))
    assert from_parquet.task_kinds == from_csv.task_kinds


def test_a_missing_parquet_value_names_the_file_column_and_row(tmp_path):
    root = as_parquet(write_table(tmp_path / "t.csv", rows=30), blank=(5, "c"))
    with pytest.raises(UserError, match=r"t.parquet, row 5: column 'c' has no value"):
        load_spec(write_spec(tmp_path, root))


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    root = tmp_path / "t.parquet"
    root.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    code, _, stderr = dagir("compile", str(write_spec(tmp_path, root)), "-o", str(tmp_path / "out"))
    assert code == 2 and "pip install 'dagir[parquet]'" in stderr and "Traceback" not in stderr, stderr


def test_table_options_name_columns(tmp_path):
    root = write_table(tmp_path / "t.csv", rows=30)
    with pytest.raises(SpecError, match="data.options.features names 'f', which is not a column"):
        load_spec(write_spec(tmp_path, root).parent / "spec.yaml", ["data.options.features=[a, f]"])
    spec = load_spec(tmp_path / "spec.yaml", ["data.options.features=[a, b, colour]"])
    from dagir.spec import input_shape
    assert input_shape(spec) == (5,)


# -- images ---------------------------------------------------------------------------------------
IMAGES_SPEC = """\
name: pictures
data: {{dataset: images, root: {root}, batch_size: 32, options: {{channels: 1}}}}
tasks:
  - {{name: brighter, kind: classification, classes: 2}}
  - {{name: level, kind: regression}}
network:
  stem: {{channels: 8}}
  central: {{nodes: 2, stages: 1, channels: 8}}
  heads: {{hidden: 8}}
train:
  warmup: {{epochs: 6, lr: 0.01}}
  search: {{epochs: 1, lr: 0.01}}
  finetune: {{epochs: 3, lr: 0.01}}
  device: cpu
"""


def write_images(folder: Path, count: int = 400, seed: int = 0, edit=None) -> Path:
    """8x8 grey images: `brighter` says whether the left half is brighter, `level` the mean brightness."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["file,brighter,level"]
    for i in range(count):
        left, right = rng.uniform(0.1, 0.9, size=2)
        pixels = np.concatenate([np.full((8, 4), left), np.full((8, 4), right)], axis=1)
        pixels = np.clip(pixels + rng.normal(0, 0.03, size=(8, 8)), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")
        lines.append(f"{i}.png,{'yes' if left > right else 'no'},{pixels.mean():.5f}")
    if edit is not None:
        edit(lines)
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_a_run_on_an_image_folder_learns_the_planted_rules(tmp_path):
    root = write_images(tmp_path / "pictures")
    spec = tmp_path / "spec.yaml"
    spec.write_text(IMAGES_SPEC.format(root=root))
    from dagir.spec import input_shape
    assert input_shape(load_spec(spec)) == (1, 8, 8)
    metrics = run_quietly(spec, tmp_path / "out")
    assert metrics["test"]["brighter"]["accuracy"] > 0.85
    assert metrics["test"]["level"]["mae"] < 0.05  # the level spreads over about 0.23 (its std)


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines.__setitem__(3, "missing.png,yes,0.5"), "labels.csv:4: image 'missing.png' does not exist"),
    (lambda lines: lines.__setitem__(0, "name,brighter,level"), "no column 'file' naming the image files"),
    (lambda lines: lines.__setitem__(2, "1.png,yes,"), "labels.csv:3: column 'level' has no value"),
])
def test_bad_image_folders_are_rejected_naming_the_line(tmp_path, edit, message):
    root = write_images(tmp_path / "pictures", count=12, edit=edit)
    spec = tmp_path / "spec.yaml"
    spec.write_text(IMAGES_SPEC.format(root=root))
    code, _, stderr = dagir("run", str(spec), "-o", str(tmp_path / "out"), "--no-progress")
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr


def test_images_of_different_sizes_need_a_size(tmp_path):
    from PIL import Image
    root = write_images(tmp_path / "pictures", count=12)
    Image.new("L", (10, 6)).save(root / "5.png")
    with pytest.raises(UserError, match=r"labels.csv:7: image is 6x10, the first 8x8; set data.options.size"):
        load_dataset("images", {"channels": 1}, str(root), tasks=["brighter"])
    data = load_dataset("images", {"channels": 1, "size": [4, 4]}, str(root), tasks=["brighter"])
    assert data.train.inputs.shape[1:] == (1, 4, 4) and float(data.train.inputs.max()) <= 1.0


# -- plugins --------------------------------------------------------------------------------------
PLUGIN = '''
import torch
from dagir.datasets.splits import Split, TaskData

def planted(options, root, val_split, seed):
    g = torch.Generator().manual_seed(options.get("seed", 0))
    x = torch.randn(600, 6, generator=g)
    label = (x[:, 0] > x[:, 1]).long()
    def split(rows):
        return Split(x[rows], {"label": label[rows]}, torch.arange(len(x))[rows][:, None])
    return TaskData("mine", split(slice(0, 400)), split(slice(400, 500)), split(slice(500, 600)), (6,),
                    {"label": "classification"}, {"label": 2})

def broken(options, root, val_split, seed):
    raise RuntimeError("the disk is on fire")
'''

PLUGIN_SPEC = """\
name: plugged
data: {{dataset: "{target}", options: {{seed: 3}}}}
tasks:
  - {{name: label, kind: classification, classes: 2}}
network:
  stem: {{channels: 8}}
  central: {{nodes: 2, stages: 1, channels: 8, edge_op: mlp}}
  heads: {{hidden: 8}}
train: {{warmup: {{epochs: 3, lr: 0.02}}, search: {{epochs: 1}}, finetune: {{epochs: 2, lr: 0.01}}, device: cpu}}
search: {{budget: {{macs: null, parameters: null}}}}
"""


@pytest.fixture()
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugin_function_is_a_data_set(plugin_module, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(PLUGIN_SPEC.format(target="my_data:planted"))
    from dagir.spec import input_shape
    assert input_shape(load_spec(spec)) == (6,)
    assert run_quietly(spec, tmp_path / "out")["test"]["label"]["accuracy"] > 0.85


@pytest.mark.parametrize("target, message", [
    ("my_data:broken", "data.dataset: data set 'my_data:broken' failed: RuntimeError: the disk is on fire"),
    ("my_data:absent", "data.dataset: module 'my_data' has no function 'absent'"),
    ("no_such_module:load", "data.dataset: cannot import the data set's module 'no_such_module'"),
])
def test_a_broken_plugin_is_reported_at_data_dataset(plugin_module, tmp_path, target, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(PLUGIN_SPEC.format(target=target))
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert message in str(caught.value)


def test_the_penguins_run_through_the_table_format_on_the_same_data(tmp_path):
    import importlib.util
    import torch
    path = Path(__file__).parent.parent / "examples" / "penguins_table.py"
    loader = importlib.util.spec_from_file_location("penguins_table", path)
    example = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(example)
    spec = load_spec(example.write_table_example(tmp_path))
    generic = load_dataset("table", spec.data.options, spec.data.root, 0.1, 0, [t.name for t in spec.tasks])
    built_in = load_dataset("penguins", {}, None, 0.1, 0)
    assert len(built_in.train) + len(built_in.val) + len(built_in.test) == 333
    for part in ("train", "val", "test"):
        a, b = getattr(generic, part), getattr(built_in, part)
        assert torch.equal(a.inputs, b.inputs)
        assert all(torch.equal(a.targets[t], b.targets[t]) for t in b.targets)
    assert generic.target_scales == pytest.approx(built_in.target_scales)


def test_a_relative_root_is_recorded_absolute_so_the_run_folder_works_from_anywhere(tmp_path, monkeypatch):
    """Read from the folder the command runs in, recorded absolute: eval from another folder finds
    the data (it looked for 'data.npz' there and failed)."""
    np.savez(tmp_path / "data.npz", **planted(rows=300))
    spec = write_spec(tmp_path, Path("data.npz"))
    monkeypatch.chdir(tmp_path)
    assert dagir("run", str(spec), "-o", "out", "--no-progress", "--set", "train.warmup.epochs=1",
                 "--set", "train.search.epochs=1", "--set", "train.finetune.epochs=1")[0] == 0
    assert load_spec(tmp_path / "out" / "spec.resolved.yaml").data.root == str(tmp_path / "data.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stdout, stderr = dagir("eval", str(tmp_path / "out"))
    assert code == 0 and "matches metrics.json" in stdout, stderr
