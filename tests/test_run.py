"""`dagir run` end to end on a tiny spec: artifacts, resume equivalence, eval, and bad input."""
from __future__ import annotations

import json
import math
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import dagir

import dagir.training.search as search_strategies
import dagir.training.loop as training_loop
import dagir.training.stages as training_loop_stages
from dagir.errors import UserError
from dagir.gates import sigmoid
from dagir.ir_io import read_ir
from dagir.run_folder import prepare_run_folder
from dagir.run_job import Run, resume_position
from dagir.spec import load_spec

TINY = """\
name: tiny
seed: 3
data: {dataset: digits, batch_size: 32}
tasks:
  - {name: digit, kind: classification, classes: 10}
  - {name: parity, kind: classification, classes: 2}
network:
  stem: {channels: 16}
  central: {nodes: 4, stages: 2, channels: [16, 12], edge_op: mlp}
  flow_restriction: {max_span: 2}
  heads: {hidden: 8}
search:
  squeeze: {kind: binary, weight: 1.0, rho: 1.0}
  budget: {macs: null, parameters: null}   # the tests that want the default budget (auto) say so
train:
  warmup: {epochs: 2, steps_per_epoch: 4, lr: 0.01, lr_schedule: cosine}
  search: {epochs: 2, steps_per_epoch: 4, lr: 0.01, gate_lr: 0.2, lr_schedule: cosine}
  finetune: {epochs: 1, steps_per_epoch: 4, lr: 0.005, lr_schedule: cosine}
  checkpoint_every: 3
  checkpoint_seconds: 0   # every checkpoint written: the resume tests stop between them
  device: cpu
"""


@pytest.fixture()
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def run_quietly(spec_path: Path, out: Path, *, resume: bool = False, overrides=()) -> dict:
    spec = load_spec(spec_path, list(overrides))
    prepare_run_folder(spec, out, resume=resume, overwrite=False)
    return Run(spec, out, resume=resume, progress=False, echo=lambda text: None).execute()


def short_tiny_run(folder: Path) -> Path:
    """A finished tiny run (one warm-up and one search epoch) in `folder/run`, for tests of what a run gives."""
    spec = folder / "tiny.yaml"
    spec.write_text(TINY)
    run_quietly(spec, folder / "run", overrides=["train.warmup.epochs=1", "train.search.epochs=1"])
    return folder / "run"


def test_run_writes_every_artifact_and_eval_reproduces(tmp_path, tiny_spec):
    out = tmp_path / "run"
    code, stdout, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--no-progress")
    assert code == 0, stderr
    for name in ("spec.resolved.yaml", "architecture.json", "compact.json", "compact.py", "compact.safetensors",
                 "gates.png", "curves.png", "metrics.json", "history.json", "supernet.py", "supernet.rewrites.json",
                 "checkpoints/latest.pt"):
        assert (out / name).is_file(), name
    assert set(json.loads((out / "supernet.rewrites.json").read_text())["fuse-edges"]) == {"search", "warmup"}
    assert sorted(p.name for p in (out / "passes" / "before-search").glob("*.json")) == [
        "01-build-central.json", "02-flow-restrict.json", "03-insert-read-io.json", "04-legalize-types.json",
        "05-attach-gates.json"]
    assert sorted(p.name for p in (out / "passes" / "after-search").glob("*.json")) == [
        "01-discretize.json", "02-flow-reduce.json", "03-fit-budget.json", "04-share-states.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"digit", "parity"}
    assert 0.0 <= metrics["test"]["digit"]["accuracy"] <= 1.0
    assert metrics["compact"]["parameters"] <= metrics["supernet"]["parameters"]
    assert max(metrics["compact"]["parameters_per_task"].values()) <= metrics["compact"]["parameters"]
    assert metrics["compact"]["macs"]["total"] <= metrics["compact"]["macs"]["separate_total"]
    assert set(metrics["stage_seconds"]) == set(metrics["stage_cpu_seconds"]) == {"warmup", "search", "finetune"}
    assert all(seconds > 0 for seconds in metrics["stage_cpu_seconds"].values())
    assert read_ir(out / "compact.json").reduced
    history = json.loads((out / "history.json").read_text())
    assert [row["stage"] for row in history] == ["warmup"] * 2 + ["search"] * 2 + ["finetune"]
    code, stdout, stderr = dagir("eval", str(out))
    assert code == 0 and "matches metrics.json" in stdout, stdout + stderr


def test_eval_reproduces_a_run_that_computed_in_bfloat16(tmp_path, tiny_spec):
    """`dagir eval` evaluates under the run's autocast, as the run did (it differed by 5e-5 without)."""
    run_quietly(tiny_spec, tmp_path / "run", overrides=["train.precision=bfloat16"])
    code, stdout, stderr = dagir("eval", str(tmp_path / "run"))
    assert code == 0 and "matches metrics.json" in stdout, stdout + stderr


class Interrupt(Exception):
    pass


def patch_loss(monkeypatch, function) -> None:
    """Replace the task loss every stage computes (search in run_job, the others in the loop)."""
    monkeypatch.setattr(search_strategies, "multitask_loss", function)
    monkeypatch.setattr(training_loop, "multitask_loss", function)


def assert_resumes_to_the_whole_run(spec: Path, out: Path, whole_folder: Path, whole: dict, overrides=()) -> None:
    """Resumed, the run in `out` reaches the uninterrupted run's test metrics and its loss history."""
    resumed = run_quietly(spec, out, resume=True, overrides=overrides)
    assert resumed["test"] == whole["test"]
    a = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["history"]
    b = torch.load(whole_folder / "checkpoints" / "latest.pt", weights_only=True)["history"]
    assert [r["train/loss"] for r in a] == pytest.approx([r["train/loss"] for r in b], rel=1e-9, abs=1e-12)


def test_resume_reaches_the_same_result(tmp_path, tiny_spec, monkeypatch):
    whole = run_quietly(tiny_spec, tmp_path / "whole")
    real_loss = training_loop.multitask_loss
    # inside warm-up, inside search after a mid-epoch checkpoint, inside fine-tuning after one, and
    # at a point drawn under a fixed seed (of the 20 loss calls the tiny run makes)
    for stop_at in (6, 16, 20, random.Random(2026).randrange(2, 21)):
        calls = {"n": 0}

        def flaky_loss(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise Interrupt()
            return real_loss(*args, **kwargs)

        out = tmp_path / f"resumed-{stop_at}"
        patch_loss(monkeypatch, flaky_loss)
        with pytest.raises(Interrupt):
            run_quietly(tiny_spec, out)
        patch_loss(monkeypatch, real_loss)
        assert_resumes_to_the_whole_run(tiny_spec, out, tmp_path / "whole", whole)
        assert read_ir(out / "architecture.json").to_dict() == read_ir(tmp_path / "whole" / "architecture.json").to_dict()


def test_checkpoints_are_written_at_most_once_a_checkpoint_seconds_and_at_every_stage_end(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(training_loop.time, "monotonic", lambda: clock["now"])

    def step(batch, epoch, index):
        clock["now"] += 1.0  # every step takes a second
        return 1.0, 0.0
    split = training_loop.Split(torch.zeros(40, 3), {"t": torch.zeros(40)}, torch.arange(40).unsqueeze(1))

    def positions(seconds: float) -> list[tuple[int, int]]:
        saved = []
        loop = training_loop.StageLoop("warmup", split, 10, 3, None, 0, step,
                                       lambda at, totals: saved.append((at.epoch, at.step)),
                                       lambda epoch, totals: None, checkpoint_every=2, checkpoint_seconds=seconds,
                                       progress=False)
        loop.run()
        return saved
    # 3 epochs of 4 steps: a checkpoint is due after steps 2 and 4 of each epoch (the 4th at its end)
    assert positions(0) == [(0, 2), (1, 0), (1, 2), (2, 0), (2, 2), (3, 0)]
    assert positions(5) == [(1, 2), (3, 0)]  # 6 s in, then the stage's end whatever the clock
    assert positions(100) == [(3, 0)]


@pytest.fixture
def ctrl_c_delivered():
    """Ctrl-C acts as at a terminal, even where the suite runs with SIGINT ignored (a background job,
    which the loop rightly leaves alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_a_stage_between_two_steps_with_a_checkpoint_there(ctrl_c_delivered):
    """SIGINT in the middle of a step lets the step finish, writes the checkpoint after it whatever
    `checkpoint_seconds` says, and raises; outside the loop Ctrl-C is Python's own again."""
    calls, saved = [], []

    def step(batch, epoch, index):
        calls.append((epoch, index))
        if (epoch, index) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)  # arrives inside the step
        return 1.0, 0.0
    split = training_loop.Split(torch.zeros(40, 3), {"t": torch.zeros(40)}, torch.arange(40).unsqueeze(1))
    loop = training_loop.StageLoop("warmup", split, 10, 3, None, 0, step,
                                   lambda at, totals: saved.append((at.epoch, at.step, totals.steps)),
                                   lambda epoch, totals: None, checkpoint_every=100, checkpoint_seconds=3600,
                                   progress=False)
    with pytest.raises(training_loop.Interrupted, match="warmup stopped in epoch 2 after step 2"):
        loop.run()
    assert calls[-1] == (1, 1) and len(calls) == 6  # the step it came in finished, no other began
    assert saved == [(1, 2, 2)]  # there, with that epoch's two steps' totals
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_run_stopped_by_ctrl_c_resumes_to_the_same_result(tmp_path, tiny_spec, monkeypatch, ctrl_c_delivered):
    sparse = ["train.checkpoint_seconds=3600"]  # no checkpoint but the stages' ends, except the one Ctrl-C writes
    whole = run_quietly(tiny_spec, tmp_path / "whole", overrides=sparse)
    real_loss = training_loop.multitask_loss
    calls = {"n": 0}

    def pressed_during_the_search(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 14:  # the search's second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args, **kwargs)
    out = tmp_path / "resumed"
    patch_loss(monkeypatch, pressed_during_the_search)
    code, stdout, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--no-progress", "--set", sparse[0])
    assert code == 130
    assert stderr.startswith("dagir: interrupted: search stopped in epoch 2 after step 2, with a checkpoint there ")
    assert "--resume continues" in stderr
    saved = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert (saved["stage"], saved["epoch"], saved["step"]) == ("search", 1, 2)
    for command in (["report"], ["eval"], ["export", "--format", "python", "-o", str(tmp_path / "net.py")]):
        code, _, stderr = dagir(command[0], str(out), *command[1:])  # what an unfinished run is, and how to finish it
        assert code == 2 and f"it holds a run that has not finished: `dagir run SPEC -o {out} --resume`" in stderr, stderr
    patch_loss(monkeypatch, real_loss)
    assert_resumes_to_the_whole_run(tiny_spec, out, tmp_path / "whole", whole, sparse)


def test_a_run_resumed_from_a_sparse_checkpoint_reaches_the_same_result(tmp_path, tiny_spec, monkeypatch):
    """With checkpoints an hour apart only the stages' ends are written; a run stopped inside the
    search goes on from the warm-up's end and repeats the search's steps exactly."""
    sparse = ["train.checkpoint_seconds=3600"]
    whole = run_quietly(tiny_spec, tmp_path / "whole", overrides=sparse)
    saved = []
    real_save = training_loop_stages.save_checkpoint
    monkeypatch.setattr(training_loop_stages, "save_checkpoint",
                        lambda path, payload: (saved.append((payload["stage"], payload["epoch"], payload["step"])),
                                               real_save(path, payload)))
    real_loss = training_loop.multitask_loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 14:  # the search's second epoch
            raise Interrupt()
        return real_loss(*args, **kwargs)
    out = tmp_path / "resumed"
    patch_loss(monkeypatch, flaky_loss)
    with pytest.raises(Interrupt):
        run_quietly(tiny_spec, out, overrides=sparse)
    assert saved == [("warmup", 2, 0)]  # the warm-up's end alone: not its first epoch, not the search's
    patch_loss(monkeypatch, real_loss)
    assert_resumes_to_the_whole_run(tiny_spec, out, tmp_path / "whole", whole, sparse)


def test_diverging_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, tiny_spec, monkeypatch):
    real_loss = training_loop.multitask_loss
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        calls["n"] += 1
        loss, parts = real_loss(*args, **kwargs)
        return (loss * float("nan"), parts) if calls["n"] >= 11 else (loss, parts)

    patch_loss(monkeypatch, exploding)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="training diverged in search epoch 1 step 3: the loss is nan; the last "
                                        "good checkpoint is kept"):
        run_quietly(tiny_spec, out)
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert (state["stage"], state["epoch"], state["step"]) == ("warmup", 2, 0)


def test_one_row_batches_with_batch_norm_over_vectors_are_refused_before_training(tmp_path, tiny_spec):
    # the MLP default's NDDR nodes batch-normalise; torch cannot in training mode on one row
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(tmp_path / "one"), "--set", "data.batch_size=1")
    assert code == 2 and "data.batch_size" in stderr and "a batch here has 1" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "one" / "checkpoints" / "latest.pt").exists()
    gated = run_quietly(tiny_spec, tmp_path / "gate", overrides=["data.batch_size=1", "network.central.aggregation=gate",
                                                                  "train.search.epochs=0", "train.finetune.epochs=0"])
    assert gated["test"]  # no batch norm: one row a batch trains


def test_bad_resume_and_eval_inputs(tmp_path, tiny_spec):
    out = tmp_path / "run"
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--resume")
    assert code == 2 and "not a dagir run folder" in stderr
    (out / "checkpoints").mkdir(parents=True)
    (out / "spec.resolved.yaml").write_text(json.dumps(load_spec(tiny_spec).resolved_dict()))
    (out / "checkpoints" / "latest.pt").write_bytes(b"garbage, not a checkpoint")
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--resume")
    assert code == 2 and "not a readable dagir checkpoint" in stderr and "Traceback" not in stderr
    torch.save({"format": "something else"}, out / "checkpoints" / "latest.pt")
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--resume")
    assert code == 2 and "not a dagir checkpoint" in stderr
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out))
    assert code == 2 and "already holds a run" in stderr
    assert (out / "checkpoints" / "latest.pt").is_file()  # nothing lost
    code, _, stderr = dagir("eval", str(tmp_path))
    assert code == 2 and "not a finished dagir run" in stderr
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--resume", "--overwrite")
    assert code == 2 and "--resume and --overwrite: give one" in stderr
    (out / "spec.resolved.yaml").write_text("garbage: [")
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--resume")
    assert code == 2 and "spec.resolved.yaml there is not a spec" in stderr and "Traceback" not in stderr, stderr


def test_task_kind_that_does_not_fit_the_data(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("kind: classification, classes: 2", "kind: regression"))
    code, _, stderr = dagir("run", str(spec), "-o", str(tmp_path / "o"))
    assert code == 2 and "tasks.1.kind: task 'parity' is classification in data set 'digits'" in stderr


def test_data_set_folder_that_does_not_exist(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("data: {dataset: digits, batch_size: 32}",
                                 f"data: {{dataset: nyuv2, root: {tmp_path / 'nowhere'}}}").replace(
        "  - {name: digit, kind: classification, classes: 10}\n  - {name: parity, kind: classification, classes: 2}",
        "  - {name: segmentation, kind: segmentation, classes: 13}\n  - {name: depth, kind: depth}").replace(
        "edge_op: mlp", "edge_op: conv"))
    code, _, stderr = dagir("run", str(spec), "-o", str(tmp_path / "o"))
    assert code == 2 and "spec.yaml:3:" in stderr and "data.root: folder" in stderr and "does not exist" in stderr


def searched_rows(history):
    return [row for row in history if row["stage"] == "search"]


@pytest.mark.parametrize("ablation, check", [
    (["network.read_in=false", "network.read_out=false"],
     lambda ir, history: [e.src for e in ir.edges.values() if e.kind == "read_in"] == ["stem"]),
    (["network.flow_restriction.max_span=null"], lambda ir, history: ir.max_span is None),
    (["search.squeeze.kind=none"], lambda ir, history: all(r["train/squeeze"] == 0.0 for r in searched_rows(history))),
    ([], lambda ir, history: all(r["train/squeeze"] > 0.0 for r in searched_rows(history))),  # the squeeze is on
    (["search.squeeze.kind=cost"], lambda ir, history: all(r["train/squeeze"] > 0.0 for r in searched_rows(history))),
    (["search.reduction.enabled=false"],
     lambda ir, history: "flow-reduce{flow_budget=0.05, enabled=false}" in ir.provenance),
])
def test_ablation_switches_run(tmp_path, tiny_spec, ablation, check):
    overrides = ablation + ["train.warmup.epochs=1", "train.search.epochs=1"]
    metrics = run_quietly(tiny_spec, tmp_path / "run", overrides=overrides)
    compact = read_ir(tmp_path / "run" / "compact.json")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert check(compact, history), compact.provenance
    assert set(metrics["test"]) == {"digit", "parity"}


@pytest.mark.parametrize("build", ["build-cross-stitch", "build-single-task", "build-hard-sharing"])
def test_baseline_search_spaces_run_through_the_same_stages(tmp_path, tiny_spec, build):
    overrides = [f"pipeline.before_search=[{build}, legalize-types, attach-gates]",
                 "pipeline.after_search=[discretize, share-states]",
                 "train.warmup.epochs=1", "train.search.epochs=1"]
    metrics = run_quietly(tiny_spec, tmp_path / "run", overrides=overrides)
    compact = read_ir(tmp_path / "run" / "compact.json")
    searched = read_ir(tmp_path / "run" / "architecture.json")
    assert len(compact.edges) == len(searched.edges)  # nothing to search: every edge stays
    assert metrics["compact"]["parameters"] == metrics["supernet"]["parameters"]


def test_faults_exit_2_and_keep_what_was_written(tmp_path, tiny_spec, monkeypatch):
    import errno

    import dagir.training.checkpoint as checkpoint

    real_save, calls = torch.save, {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="cannot write the checkpoint .No space left on device.; the previous "
                                        "checkpoint is kept"):
        run_quietly(tiny_spec, out)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    kept = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert (kept["stage"], kept["epoch"], kept["step"]) == ("warmup", 1, 0)  # the second save, intact
    assert not (out / "checkpoints" / "latest.pt.partial").exists()
    assert run_quietly(tiny_spec, out, resume=True)["test"]  # and the run goes on from it
    # -o naming a file, and a malformed metrics.json: exit 2, no traceback
    (tmp_path / "a-file").write_text("x")
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(tmp_path / "a-file"), "--overwrite")
    assert code == 2 and "exists and is not a folder" in stderr and "Traceback" not in stderr
    assert (tmp_path / "a-file").read_text() == "x"
    (out / "metrics.json").write_text('{"test": [1, 2]}')
    code, _, stderr = dagir("eval", str(out))
    assert code == 2 and "not a dagir metrics file" in stderr and "Traceback" not in stderr


def test_a_second_command_into_a_running_folder_refuses_at_once(tmp_path, tiny_spec):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "dagir.cli", "run", str(tiny_spec), "-o", str(out), "--no-progress"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".dagir.lock"
        for _ in range(1200):  # up to a minute: on a loaded machine importing torch alone can take 10 s
            if lock.is_file() and "pid" in lock.read_text():
                break
            time.sleep(0.05)
        started = time.perf_counter()
        code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--overwrite", "--no-progress")
        assert code == 2 and "in use by dagir run (pid " in stderr and "Traceback" not in stderr, stderr
        assert time.perf_counter() - started < 10
        code, _, stderr = dagir("bench", str(tiny_spec), "-o", str(out), "--methods", "hard_sharing")
        assert code == 2 and "in use by dagir run" in stderr
    finally:
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err  # the first run was not disturbed
    assert json.loads((out / "metrics.json").read_text())["test"]
    # the lock died with its process: the folder is free again, and compile will not clobber the run
    code, _, stderr = dagir("compile", str(tiny_spec), "-o", str(out))
    assert code == 2 and "holds a dagir run" in stderr and "--overwrite" in stderr
    assert dagir("eval", str(out))[0] == 0


def test_a_killed_run_leaves_no_stale_lock(tmp_path, tiny_spec):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "dagir.cli", "run", str(tiny_spec), "-o", str(out), "--no-progress"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if (out / ".dagir.lock").is_file() and "pid" in (out / ".dagir.lock").read_text():
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--overwrite", "--no-progress")
    assert code == 0, stderr


def test_divergence_before_any_checkpoint_says_so(tmp_path, tiny_spec, monkeypatch):
    real_loss = training_loop.multitask_loss

    def exploding(*args, **kwargs):
        loss, parts = real_loss(*args, **kwargs)
        return loss * float("nan"), parts

    patch_loss(monkeypatch, exploding)
    with pytest.raises(UserError, match="warmup epoch 1 step 1: the loss is nan; no checkpoint was written before it"):
        run_quietly(tiny_spec, tmp_path / "run")


def interrupted_in_search(tmp_path, tiny_spec, monkeypatch) -> Path:
    """A tiny run stopped in its search stage (after the checkpoint at search epoch 1 step 3)."""
    real_loss = training_loop.multitask_loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:
            raise Interrupt()
        return real_loss(*args, **kwargs)

    out = tmp_path / "run"
    patch_loss(monkeypatch, flaky_loss)
    with pytest.raises(Interrupt):
        run_quietly(tiny_spec, out)
    patch_loss(monkeypatch, real_loss)
    return out


def test_resume_takes_a_new_learning_rate_and_more_epochs_and_records_them(tmp_path, tiny_spec, monkeypatch):
    out = interrupted_in_search(tmp_path, tiny_spec, monkeypatch)
    import dagir.training.stages as training_stages
    seen: list[float] = []
    real_set = training_stages.set_learning_rates

    def recording(optimizers, progress, *, schedule):
        real_set(optimizers, progress, schedule=schedule)
        seen.extend(group["initial_lr"] for optimizer in optimizers for group in optimizer.param_groups)

    monkeypatch.setattr(training_stages, "set_learning_rates", recording)
    overrides = ["train.search.lr=0.003", "train.search.gate_lr=0.02", "train.finetune.epochs=2"]
    metrics = run_quietly(tiny_spec, out, resume=True, overrides=overrides)
    assert 0.003 in seen and 0.01 not in seen  # the resumed search stepped with the new lr, not the saved one
    assert metrics["stage_seconds"]["finetune"] > 0
    assert set(metrics["stage_cpu_seconds"]) == {"warmup", "search", "finetune"}  # the first run's carried over
    finetune_rows = [row for row in json.loads((out / "history.json").read_text()) if row["stage"] == "finetune"]
    assert len(finetune_rows) == 2
    log = json.loads((out / "resume-changes.json").read_text())
    assert log[-1]["changes"] == {"train.finetune.epochs": {"from": 1, "to": 2},
                                  "train.search.gate_lr": {"from": 0.2, "to": 0.02},
                                  "train.search.lr": {"from": 0.01, "to": 0.003}}
    assert load_spec(tiny_spec, overrides).resolved_dict() == load_spec(out / "spec.resolved.yaml").resolved_dict()


def test_a_refused_resume_says_what_continues_the_run_as_it_started(tmp_path, tiny_spec, monkeypatch):
    out = interrupted_in_search(tmp_path, tiny_spec, monkeypatch)
    changed = ["train.finetune.lr_schedule=constant", "search.squeeze.rho=2"]
    with pytest.raises(UserError) as refused:
        run_quietly(tiny_spec, out, resume=True, overrides=changed)
    told = str(refused.value).split("to continue it as it started: ")[1].split()
    assert told == ["--set", "search.squeeze.rho=1.0", "--set", "train.finetune.lr_schedule=cosine"]
    restored = changed + [option for option in told if option != "--set"]  # a later --set wins
    assert run_quietly(tiny_spec, out, resume=True, overrides=restored)["test"]


@pytest.mark.parametrize("override, message", [
    ("network.central.nodes=5", "different spec (network.central.nodes: 4 -> 5); on --resume only"),
    ("network.central.nodes=5", "to continue it as it started: --set network.central.nodes=4\n"),
    ("train.finetune.lr_schedule=constant", "as it started: --set train.finetune.lr_schedule=cosine\n"),
    ("tasks.1.weight=2", "different spec (tasks: "),
    ("train.warmup.epochs=3", "train.warmup.epochs cannot change on --resume: the warmup stage is finished"),
    ("train.search.epochs=0", "train.search.epochs cannot be 0 on --resume: the search stage has already run 1 epoch"),
])
def test_resume_refuses_a_change_that_makes_another_run(tmp_path, tiny_spec, monkeypatch, override, message):
    out = interrupted_in_search(tmp_path, tiny_spec, monkeypatch)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--resume", "--set", override, "--no-progress")
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name != ".dagir.lock"} == {
        path: data for path, data in before.items() if path.name != ".dagir.lock"}


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path, tiny_spec):
    out = tmp_path / "run"
    out.mkdir()
    (out / "spec.resolved.yaml").write_text(load_spec(tiny_spec).resolved_yaml())
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--resume")
    assert code == 2 and "stopped before its first checkpoint" in stderr and "--overwrite" in stderr


def test_resume_position_reads_as_a_person_would():
    spec = load_spec(Path(__file__).parent.parent / "examples" / "multimnist.yaml", ["train.search.epochs=10"])
    assert resume_position({"stage": "search", "epoch": 10, "step": 0}, spec) == "search finished (10 of 10 epochs)"
    assert resume_position({"stage": "search", "epoch": 2, "step": 40}, spec) == "search epoch 3 of 10, step 40"


@pytest.mark.parametrize("kind, aggregator", [("uw", "none"), ("dwa", "none"), ("dwa", "upgrad"), ("sum", "mgda")])
def test_loss_weighting_from_torchjd_trains_and_resumes_exactly(tmp_path, tiny_spec, monkeypatch, kind, aggregator):
    overrides = [f"train.loss_weighting.kind={kind}", "train.loss_weighting.lr=0.1",
                 f"train.loss_weighting.aggregator={aggregator}"]
    whole = run_quietly(tiny_spec, tmp_path / "whole", overrides=overrides)
    run_quietly(tiny_spec, tmp_path / "plain", overrides=["train.loss_weighting.kind=sum"])
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    plain_history = json.loads((tmp_path / "plain" / "history.json").read_text())
    assert history[-1]["train/loss"] != plain_history[-1]["train/loss"]  # the weighting changed the training
    resolved = load_spec(tmp_path / "whole" / "spec.resolved.yaml").train.loss_weighting
    assert (resolved.kind, resolved.aggregator) == (kind, aggregator)
    if kind == "uw":  # the learned weights ½e^{-s_t} moved away from their start, 0.5
        assert all(abs(history[-1][f"weight/{task}"] - 0.5) > 1e-3 for task in ("digit", "parity"))
    real_loss = training_loop.multitask_loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 14:  # inside the search, after its mid-epoch checkpoint
            raise Interrupt()
        return real_loss(*args, **kwargs)

    patch_loss(monkeypatch, flaky_loss)
    with pytest.raises(Interrupt):
        run_quietly(tiny_spec, tmp_path / "resumed", overrides=overrides)
    patch_loss(monkeypatch, real_loss)
    assert run_quietly(tiny_spec, tmp_path / "resumed", resume=True, overrides=overrides)["test"] == whole["test"]


def assert_kept_the_best_epoch(out: Path, metrics: dict, stage: str, scored: str) -> None:
    """The run in `out` kept the epoch of `stage` whose `scored/...` validation accuracies gain most
    over its first epoch (the first of equal scores), not its last, and the network it exported
    scores what that epoch did."""
    from dagir.backends.torch_export import load_compact
    from dagir.datasets import load_dataset
    from dagir.tasks import delta_mtl
    from dagir.training.loop import evaluate

    rows = [row for row in json.loads((out / "history.json").read_text()) if row["stage"] == stage]
    kinds = {"digit": "classification", "parity": "classification"}
    scores = [delta_mtl({t: row[f"{scored}/{t}/accuracy"] for t in kinds},
                        {t: rows[0][f"{scored}/{t}/accuracy"] for t in kinds}, kinds) for row in rows]
    chosen = max(range(len(rows)), key=lambda i: (scores[i], -i))
    assert chosen + 1 < len(rows) and min(scores) < scores[chosen]  # it peaks before its last epoch
    assert metrics["selected_epoch"] == {stage: chosen + 1}
    spec = load_spec(out / "spec.resolved.yaml")
    module, _ = load_compact(out)
    data = load_dataset(spec.data.dataset, spec.data.options, spec.data.root, spec.data.val_split, spec.seed)
    val = evaluate(module, data.val, spec.tasks, data)
    assert {t: val[t]["accuracy"] for t in kinds} == pytest.approx({t: rows[chosen][f"{scored}/{t}/accuracy"] for t in kinds})


def test_select_best_keeps_the_final_stages_best_validation_epoch(tmp_path, tiny_spec):
    out = tmp_path / "run"
    overrides = ["train.select=best", "train.finetune.epochs=4", "train.finetune.lr=0.5"]  # an lr that makes it wander
    assert_kept_the_best_epoch(out, run_quietly(tiny_spec, out, overrides=overrides), "finetune", "val")


def test_search_select_best_ends_with_the_decisions_of_its_best_discretised_epoch(tmp_path, tiny_spec):
    out = tmp_path / "run"
    # a squeeze that closes gates the tasks need as it ramps up; no fine-tune and no flow reduction,
    # so the exported network is the discretised supernet the search ended with
    overrides = ["train.search.select=best", "train.warmup.steps_per_epoch=30", "train.search.epochs=5",
                 "search.squeeze.weight=5", "search.squeeze.rho=8", "train.search.gate_lr=0.3",
                 "train.finetune.epochs=0", "search.reduction.enabled=false"]
    assert_kept_the_best_epoch(out, run_quietly(tiny_spec, out, overrides=overrides), "search", "select")


def test_compile_supernet_serves_the_warm_up_and_the_search_through_torch_compile(tmp_path, tiny_spec, monkeypatch):
    """The wiring of `train.compile_supernet` (torch.compile itself is tested on the supernet in
    test_fast_lowering): a spy stands in for it, so this run computes exactly the uncompiled one."""
    from dagir.backends.torch_supernet import Supernet
    compiled = []

    def spy(module):
        compiled.append(isinstance(module, Supernet))
        return module
    plain = run_quietly(tiny_spec, tmp_path / "plain")
    monkeypatch.setattr(torch, "compile", spy)
    served = run_quietly(tiny_spec, tmp_path / "served", overrides=["train.compile_supernet=true"])
    assert compiled == [True, True]  # the supernet for the warm-up and for the search; the compact network not
    assert served["test"] == plain["test"]


def test_warmup_edge_dropout_trains_sub_networks(tmp_path, tiny_spec, monkeypatch):
    from dagir.backends.torch_gates import GateTable
    drawn: list[torch.Tensor] = []
    real_fix = GateTable.fix

    def recording(self, values):
        drawn.append(values.clone())
        real_fix(self, values)

    monkeypatch.setattr(GateTable, "fix", recording)
    overrides = ["train.warmup.edge_dropout=0.3", "train.search.epochs=1"]
    first = run_quietly(tiny_spec, tmp_path / "a", overrides=overrides)
    warmup_draws = drawn[:8]  # the tiny warm-up takes 2 epochs of 4 steps
    off = torch.cat(warmup_draws)
    assert 0.2 < float((off == 0).float().mean()) < 0.4  # about 30% of the gates off in each step
    assert not all(torch.equal(warmup_draws[0], d) for d in warmup_draws[1:])  # a new sub-network each step
    drawn.clear()
    again = run_quietly(tiny_spec, tmp_path / "b", overrides=overrides)
    assert again["test"] == first["test"]  # the draws are fixed by the seed
    drawn.clear()
    run_quietly(tiny_spec, tmp_path / "c", overrides=["train.search.epochs=1"])
    assert drawn == []  # off by default: the warm-up trains the whole supernet
    assert load_spec(tmp_path / "a" / "spec.resolved.yaml").train.warmup.edge_dropout == 0.3


TWINS = """\
name: twins
seed: 0
data: {dataset: mmoe_synthetic, options: {correlation: 1.0, dim: 8, samples: 600, noise_std: 0.0}, batch_size: 64}
tasks:
  - {name: a, kind: regression}
  - {name: b, kind: regression}
network:
  stem: {channels: 8}
  central: {nodes: 4, stages: 1, channels: 8, edge_op: mlp}
  flow_restriction: {max_span: 2}
  heads: {hidden: 4}
search:
  gates: {init_noise: 1.0}
train:
  warmup: {epochs: 1, lr: 0.01}
  search: {epochs: 3, lr: 0.01, gate_lr: 0.2}
  finetune: {epochs: 0}
  device: cpu
"""


def test_the_sharing_term_makes_tasks_with_equal_targets_share_more_states(tmp_path):
    """Pooled over three seeds (one tiny run's count moves by a state with the rounding of a sum):
    with the term the two tasks' gates end closer, and a smaller share of their states is distinct."""
    spec = tmp_path / "twins.yaml"
    spec.write_text(TWINS)  # two tasks with the same target; the gates start apart (init_noise)

    def searched(name: str, weight: int) -> tuple[int, int, float]:
        distinct = states = 0
        apart = []
        for seed in range(3):
            out = tmp_path / f"{name}-{seed}"
            counts = run_quietly(spec, out, overrides=[f"search.sharing.weight={weight}", f"seed={seed}",
                                                       "search.budget.macs=null", "search.budget.parameters=null"]
                                 )["share_states"]
            distinct, states = distinct + counts["distinct_states"], states + counts["task_states"]
            decisions = json.loads((out / "architecture.json").read_text())["decisions"]
            apart += [abs(sigmoid(d["logits"]["a"][0]) - sigmoid(d["logits"]["b"][0])) for d in decisions
                      if {"a", "b"} <= set(d["logits"])]  # an edge both tasks decide
        return distinct, states, sum(apart) / len(apart)
    alone, shared = searched("alone", 0), searched("shared", 50)
    assert shared[2] < 0.5 * alone[2], "the term pulls the tasks' gates together"
    assert shared[0] / shared[1] < alone[0] / alone[1]
    assert load_spec(tmp_path / "shared-0" / "spec.resolved.yaml").search.sharing.weight == 50


def test_a_tasks_squeeze_strength_closes_more_of_its_gates(tmp_path, tiny_spec):
    from dagir.gates import sigmoid

    def mean_gate(out: Path, task: str) -> float:
        decisions = read_ir(out / "architecture.json").decisions.values()
        values = [sigmoid(d.logits[task][0]) for d in decisions if d.kind == "bernoulli" and task in d.logits]
        return sum(values) / len(values)

    # a light squeeze that closes what the task losses do not hold open (ρ = 4), 20 times harder for
    # parity (Adam normalises each gate's step: a strength matters against the task loss, not alone);
    # summed nodes and losses, so a gate's size reaches its task's loss undivided
    light = ["search.squeeze.rho=4", "search.squeeze.weight=0.1", "network.central.aggregation=sum",
             "train.loss_weighting.kind=sum"]
    run_quietly(tiny_spec, tmp_path / "plain", overrides=light)
    run_quietly(tiny_spec, tmp_path / "squeezed", overrides=light + ["tasks.1.squeeze=20"])
    parity_drop = mean_gate(tmp_path / "plain", "parity") - mean_gate(tmp_path / "squeezed", "parity")
    digit_drop = mean_gate(tmp_path / "plain", "digit") - mean_gate(tmp_path / "squeezed", "digit")
    assert parity_drop > 0.1 and parity_drop > 10 * abs(digit_drop)


def test_a_macs_budget_is_met_by_the_compact_network(tmp_path, tiny_spec):
    free = run_quietly(tiny_spec, tmp_path / "free")["compact"]["macs"]["total"]
    budget = int(free * 0.8)
    metrics = run_quietly(tiny_spec, tmp_path / "fitted", overrides=[f"search.budget.macs={budget}"])
    assert metrics["compact"]["macs"]["total"] <= budget < free
    assert metrics["fit_budget"]["met"] and metrics["fit_budget"]["removed"]
    code, _, stderr = dagir("compile", str(tiny_spec), "-o", str(tmp_path / "c"), "--set", "search.budget.macs=5",
                            "--set", "pipeline.after_search=[discretize, flow-reduce, share-states]")
    assert code == 2 and "search.budget: a budget is met by the fit-budget pass" in stderr


def test_a_single_task_budget_is_what_the_single_task_networks_cost(tmp_path, tiny_spec):
    """`search.budget.parameters: single_task` is the parameter count of the trained single-task
    networks (counted on their torch module), and the compact network keeps within it; a spec that
    names no budget gets that one (`auto`), in MACs too."""
    from dagir.methods import method_spec

    # every edge of a denser space kept: a compact network over the limit
    dense = ["network.central.nodes=6", "network.flow_restriction.max_span=3", "search.squeeze.kind=none",
             "search.reduction.enabled=false", "search.gates.init=4"]
    spec = load_spec(tiny_spec, dense + ["search.budget.parameters=single_task"])
    single_out = tmp_path / "single"
    prepare_run_folder(spec, single_out, resume=False, overwrite=False)
    single = Run(method_spec(spec, "single_task"), single_out, progress=False, echo=lambda text: None).execute()
    free = run_quietly(tiny_spec, tmp_path / "free", overrides=dense + ["search.budget.parameters=null",
                                                                         "search.budget.macs=null"])
    fitted = run_quietly(tiny_spec, tmp_path / "fitted", overrides=dense + ["search.budget.parameters=single_task",
                                                                             "search.budget.macs=null"])
    limit = single["compact"]["parameters"]
    assert fitted["fit_budget"]["parameters"] == limit < free["compact"]["parameters"]
    assert fitted["compact"]["parameters"] <= limit and fitted["fit_budget"]["met"]
    assert "parameters: single_task" in (tmp_path / "fitted" / "spec.resolved.yaml").read_text()
    default = run_quietly(tiny_spec, tmp_path / "default",  # as a spec without a budget line
                          overrides=dense + ["search.budget.parameters=auto", "search.budget.macs=auto"])
    assert default["fit_budget"]["parameters"] == limit
    assert default["fit_budget"]["macs"] == single["compact"]["macs"]["total"]
    assert default["compact"]["parameters"] <= limit and default["fit_budget"]["met"]
    resolved = (tmp_path / "default" / "spec.resolved.yaml").read_text()
    assert "macs: single_task" in resolved and "parameters: single_task" in resolved


def test_a_run_writes_tensorboard_events_of_every_stage(tmp_path, tiny_spec):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(out), "--no-progress", "--tensorboard")
    assert code == 0, stderr
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    history = json.loads((out / "history.json").read_text())
    loss = events.Scalars("train/loss")
    assert [e.value for e in loss] == pytest.approx([row["train/loss"] for row in history])
    assert {"val/digit/accuracy", "val/parity/accuracy", "search/tau", "test/digit/accuracy"} <= set(tags["scalars"])
    assert any(tag.startswith("lr/search/") for tag in tags["scalars"])
    assert {"gates/digit", "gates/parity"} <= set(tags["histograms"])
    assert "passes/before-search/05-attach-gates" in tags["images"] and "run/gates" in tags["images"]
    assert any("compact_architecture" in tag for tag in tags["tensors"])
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(tmp_path / "quiet"), "--no-progress", "--no-tensorboard",
                            "--set", "train.warmup.epochs=1", "--set", "train.search.epochs=1")
    assert code == 0, stderr
    assert not (tmp_path / "quiet" / "tensorboard").exists()


def test_float16_trains_with_a_gradient_scaler_that_skips_overflowing_steps(tmp_path, tiny_spec, monkeypatch):
    metrics = run_quietly(tiny_spec, tmp_path / "half", overrides=["train.precision=float16"])
    history = json.loads((tmp_path / "half" / "history.json").read_text())
    assert all(math.isfinite(v) for task in metrics["test"].values() for v in task.values())
    assert "train/skipped_steps" in history[-1]
    real_loss = training_loop.multitask_loss

    def huge(*args, **kwargs):  # gradients past float16's range: the scaler must skip, not crash
        loss, parts = real_loss(*args, **kwargs)
        return loss.float() * 1e6, parts

    patch_loss(monkeypatch, huge)
    run_quietly(tiny_spec, tmp_path / "overflow", overrides=["train.precision=float16"])
    history = json.loads((tmp_path / "overflow" / "history.json").read_text())
    assert history[-1]["train/skipped_steps"] > 0


CONV_TINY = TINY.replace("data: {dataset: digits, batch_size: 32}",
                         "data: {dataset: multimnist, batch_size: 32, options: {canvas: 28, train_size: 256, "
                         "val_size: 64, test_size: 64}}").replace(
    "  - {name: digit, kind: classification, classes: 10}\n  - {name: parity, kind: classification, classes: 2}",
    "  - {name: left, kind: classification, classes: 10}\n  - {name: right, kind: classification, classes: 10}").replace(
    "  stem: {channels: 16}", "  stem: {channels: 8, stride: 2}").replace(
    "channels: [16, 12], edge_op: mlp", "channels: [8, 8], edge_op: conv")


def test_a_compiled_compact_network_trains_as_the_plain_one(tmp_path, tiny_spec):
    import shutil
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    # gate nodes: with the MLP default (NDDR, batch norm) the biases of the edges into a node get a zero
    # gradient up to rounding (batch norm removes the mean), which Adam scales up to lr-sized steps, so
    # the compiled and plain trainings part by ~1e-2 there: rounding, but not the 1e-4 this checks
    overrides = ["network.central.aggregation=gate"]
    plain = run_quietly(tiny_spec, tmp_path / "plain", overrides=overrides)
    compiled = run_quietly(tiny_spec, tmp_path / "compiled", overrides=overrides + ["train.compile=true"])
    weights = [load_file(tmp_path / name / "compact.safetensors") for name in ("plain", "compiled")]
    assert weights[0].keys() == weights[1].keys()  # the export holds the plain module's names, not the compiled one's
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) < 1e-4  # fused kernels' rounding
    assert compiled["test"] == plain["test"]


def test_compile_without_a_compiler_is_refused_before_training(tmp_path, tiny_spec, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    monkeypatch.delenv("CXX", raising=False)
    code, _, stderr = dagir("run", str(tiny_spec), "-o", str(tmp_path / "run"), "--set", "train.compile=true",
                            "--no-progress")
    assert code == 2 and "train.compile" in stderr and "C++ compiler" in stderr, stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_channels_last_computes_what_the_plain_supernet_does(tmp_path):
    from dagir.backends.torch_supernet import lower_supernet
    from dagir.pipeline import compile_spec
    from dagir.training.precision import Precision
    spec = tmp_path / "conv.yaml"
    spec.write_text(CONV_TINY)
    ir, precision = compile_spec(load_spec(spec)), Precision(channels_last=True)

    def supernet(channels_last: bool):
        torch.manual_seed(0)
        model = lower_supernet(ir)
        model.gates.mode = "soft"
        return precision.model(model) if channels_last else model

    plain, fast = supernet(False), supernet(True)
    assert fast.state_dict()["edge_h2_h3.conv.weight"].is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(16, 1, 28, 28)
    assert precision.inputs(x).is_contiguous(memory_format=torch.channels_last)
    outputs = plain(x), fast(precision.inputs(x))
    for task in ("left", "right"):
        torch.testing.assert_close(outputs[1][task], outputs[0][task], rtol=1e-5, atol=1e-5)
    sum(outputs[0].values()).sum().backward()
    sum(outputs[1].values()).sum().backward()
    expected = dict(plain.named_parameters())
    for name, parameter in fast.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(parameter.grad, expected[name].grad, rtol=1e-4, atol=1e-4)


def test_a_channels_last_run_on_images(tmp_path):
    spec = tmp_path / "conv.yaml"
    spec.write_text(CONV_TINY)
    metrics = run_quietly(spec, tmp_path / "run", overrides=["train.channels_last=true"])
    assert set(metrics["test"]) == {"left", "right"} and metrics["compact"]["edges"] > 0


def test_a_run_with_task_branches_keeps_each_tasks_branch_apart(tmp_path, tiny_spec):
    metrics = run_quietly(tiny_spec, tmp_path / "run", overrides=["network.central.task_stages=1"])
    compact = read_ir(tmp_path / "run" / "compact.json")
    owners = {node.task for node in compact.hidden_nodes() if node.name.startswith(("h3_", "h4_"))}
    assert owners <= {"digit", "parity"} and owners  # the last stage's nodes are per-task copies
    assert all(node.task is None for node in compact.hidden_nodes() if node.name in ("h1", "h2"))
    assert metrics["compact"]["parameters"] > 0 and set(metrics["test"]) == {"digit", "parity"}


def test_a_fresh_fine_tune_keeps_the_searched_architecture_and_none_of_its_weights(tmp_path, tiny_spec):
    """`train.finetune.weights: fresh`: the same search (same seed), so the same compact network, but
    its weights start from a new initialisation; with no fine-tune epoch the export shows the start."""
    untrained = ["train.finetune.epochs=0"]
    run_quietly(tiny_spec, tmp_path / "searched", overrides=untrained)
    run_quietly(tiny_spec, tmp_path / "fresh", overrides=untrained + ["train.finetune.weights=fresh"])
    assert (tmp_path / "fresh" / "compact.json").read_text() == (tmp_path / "searched" / "compact.json").read_text()
    inherited = load_file(tmp_path / "searched" / "compact.safetensors")
    fresh = load_file(tmp_path / "fresh" / "compact.safetensors")
    assert inherited.keys() == fresh.keys()
    weights = [name for name in fresh if name.endswith("weight") and fresh[name].dim() > 1]
    assert weights and not any(torch.equal(fresh[name], inherited[name]) for name in weights)
    recorded = (tmp_path / "fresh" / "spec.resolved.yaml").read_text()
    assert "weights: fresh" in recorded and "weights: searched" in (tmp_path / "searched" / "spec.resolved.yaml").read_text()


def test_a_run_with_task_copies_beside_the_shared_nodes(tmp_path, tiny_spec):
    """`task_copies: beside`: the supernet holds the shared last stage and a copy per task; the compact
    network keeps, per task and node, whichever the search chose, and no copy serves another task."""
    out = tmp_path / "run"
    metrics = run_quietly(tiny_spec, out, overrides=["network.central.task_stages=1",
                                                    "network.central.task_copies=beside"])
    searched = read_ir(out / "architecture.json")
    last_stage = {node.name: node.task for node in searched.hidden_nodes() if node.name.startswith(("h3", "h4"))}
    assert last_stage == {"h3": None, "h3_digit": "digit", "h3_parity": "parity",
                          "h4": None, "h4_digit": "digit", "h4_parity": "parity"}
    compact = read_ir(out / "compact.json")
    for (src, dst), edge in compact.edges.items():
        owner = compact.nodes[src].task
        if owner is not None:
            assert set(edge.tasks) == {owner}, (src, dst)
    assert set(metrics["test"]) == {"digit", "parity"}


def test_compile_over_a_run_leaves_the_compile_alone_and_a_failed_one_leaves_the_run(tmp_path, monkeypatch):
    """`compile --overwrite` over a finished run: the folder then holds the compile and no results of
    the old spec (eval found the old compact network beside the new spec and crashed); a compile that
    fails, at its last step, changes nothing there."""
    import dagir.backends.torch_supernet as torch_supernet

    run = short_tiny_run(tmp_path)
    spec = tmp_path / "tiny.yaml"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".dagir.lock"}

    def failing(ir):
        raise UserError("lowering failed")
    monkeypatch.setattr(torch_supernet, "lower_supernet", failing)
    code, _, stderr = dagir("compile", str(spec), "-o", str(run), "--overwrite")
    assert code == 2 and "lowering failed" in stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".dagir.lock"} == before
    monkeypatch.undo()
    code, _, stderr = dagir("compile", str(spec), "-o", str(run), "--overwrite", "--set", "network.central.nodes=3")
    assert code == 0, stderr
    assert {p.name for p in run.iterdir()} == {".dagir.lock", "passes", "spec.resolved.yaml", "supernet.py",
                                               "summary.json"}
    code, _, stderr = dagir("eval", str(run))
    assert code == 2 and "not a finished dagir run" in stderr and "Traceback" not in stderr
