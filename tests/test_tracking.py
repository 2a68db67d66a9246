"""`dagir run --mlflow URI`: the run in MLflow, read back with MLflow's own client."""
from __future__ import annotations

import json
import sys

import pytest
from test_cli import dagir
from test_run import TINY, Interrupt, patch_loss

import dagir.training.loop as training_loop
from dagir.run_folder import prepare_run_folder
from dagir.run_job import Run
from dagir.spec import load_spec


@pytest.fixture()
def file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install 'dagir[mlflow]'")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 takes a folder store only when asked
    return f"file:{tmp_path / 'mlruns'}"


def tracked_run(spec_path, out, uri, *, resume=False):
    spec = load_spec(spec_path)
    prepare_run_folder(spec, out, resume=resume, overwrite=False)
    return Run(spec, out, resume=resume, progress=False, echo=lambda text: None, tensorboard=False,
               mlflow=uri).execute()


def test_a_run_logs_its_spec_metrics_and_drawings_to_mlflow(tmp_path, file_store):
    from mlflow.tracking import MlflowClient
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    metrics = tracked_run(spec, tmp_path / "run", file_store)
    record = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    client = MlflowClient(file_store)
    logged = client.get_run(record["run_id"])
    assert logged.data.params["train.search.gate_lr"] == "0.2" and logged.data.params["seed"] == "3"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    losses = client.get_metric_history(record["run_id"], "train/loss")
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx([row["train/loss"] for row in history])
    assert logged.data.metrics["test/digit/accuracy"] == pytest.approx(metrics["test"]["digit"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"metrics.json", "compact.json", "run", "passes"} <= artifacts
    assert {a.path for a in client.list_artifacts(record["run_id"], "run")} >= {"run/gates.png", "run/curves.png",
                                                                               "run/compact_architecture.txt"}


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tmp_path, file_store, monkeypatch):
    from mlflow.tracking import MlflowClient
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    real_loss, calls = training_loop.multitask_loss, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:
            raise Interrupt()
        return real_loss(*args, **kwargs)

    patch_loss(monkeypatch, flaky)
    with pytest.raises(Interrupt):
        tracked_run(spec, tmp_path / "run", file_store)
    first = json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"]
    client = MlflowClient(file_store)
    assert client.get_run(first).info.status == "FAILED"  # the interrupted run does not look finished
    patch_loss(monkeypatch, real_loss)
    tracked_run(spec, tmp_path / "run", file_store, resume=True)
    assert json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"] == first
    assert client.get_run(first).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(first).info.experiment_id])) == 1
    steps = [m.step for m in client.get_metric_history(first, "train/loss")]
    assert sorted(set(steps)) == list(range(1, 6))  # every epoch of the five, before and after the resume


def test_mlflow_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    code, _, stderr = dagir("run", str(spec), "-o", str(tmp_path / "a"), "--mlflow", "file:x", "--no-progress")
    assert code == 2 and "pip install 'dagir[mlflow]'" in stderr and "Traceback" not in stderr, stderr


def test_a_store_mlflow_refuses_is_a_clear_error_before_training(tmp_path):
    pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install 'dagir[mlflow]'")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    code, _, stderr = dagir("run", str(spec), "-o", str(tmp_path / "a"), "--mlflow", "bogus://nowhere", "--no-progress")
    assert code == 2 and "--mlflow bogus://nowhere: " in stderr and "unsupported URI" in stderr, stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_an_unreachable_tracking_server_is_a_clear_error_at_once(tmp_path):
    """MLflow's client retried an unreachable server for four minutes, after OUT was written."""
    import time

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    started = time.perf_counter()
    code, _, stderr = dagir("run", str(spec), "-o", str(tmp_path / "a"), "--mlflow", "http://127.0.0.1:9",
                            "--no-progress")
    assert code == 2 and "--mlflow http://127.0.0.1:9: no tracking server answers there" in stderr, stderr
    assert time.perf_counter() - started < 30 and not (tmp_path / "a").exists()
