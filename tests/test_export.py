"""`dagir export`: ONNX, TorchScript and standalone Python equal the PyTorch module, and load without dagir."""
from __future__ import annotations

import subprocess
import sys

import pytest
from test_cli import dagir
from test_run import short_tiny_run

BLOCK_DAGIR = "import sys; sys.modules['dagir'] = None  # any import of dagir fails\n"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return short_tiny_run(tmp_path_factory.mktemp("finished_run"))


def without_dagir(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_DAGIR + code], capture_output=True, text=True, timeout=120)


def test_torchscript_equals_pytorch_and_loads_without_dagir(finished_run, tmp_path):
    target = tmp_path / "model.pt"
    code, stdout, stderr = dagir("export", str(finished_run), "--format", "torchscript", "-o", str(target))
    assert code == 0, stderr
    assert "digit" in stdout and "max |export - pytorch| = 0" in stdout
    loaded = without_dagir(f"import torch; m = torch.jit.load({str(target)!r}); "
                           "print(sorted((k, tuple(v.shape)) for k, v in m(torch.zeros(2, 64)).items()))")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[('digit', (2, 10)), ('parity', (2, 2))]"


def test_python_export_equals_pytorch_and_runs_without_dagir(finished_run, tmp_path):
    target = tmp_path / "network.py"
    code, _, stderr = dagir("export", str(finished_run), "--format", "python", "-o", str(target))
    assert code == 0, stderr
    loaded = without_dagir(f"import sys, torch; sys.path.insert(0, {str(tmp_path)!r}); import network; "
                           f"m = network.load({str(tmp_path / 'network.safetensors')!r}); "
                           "print(sorted(m(torch.zeros(2, 64))))")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "['digit', 'parity']"
    source = target.read_text()
    assert "class NddrAggregation" in source  # the tiny spec's nodes (the default aggregation of an MLP space)
    assert unbound_globals(source) == set(), "every name the copied classes read is defined in the file"


def unbound_globals(source: str) -> set[str]:
    """The global names some scope of `source` reads that neither the module nor Python's builtins define."""
    import builtins
    import symtable
    top = symtable.symtable(source, "network.py", "exec")
    defined = {symbol.get_name() for symbol in top.get_symbols() if symbol.is_assigned() or symbol.is_imported()}
    unbound, tables = set(), [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        unbound |= {symbol.get_name() for symbol in table.get_symbols()
                    if symbol.is_referenced() and (symbol.is_global() or table is top)
                    and symbol.get_name() not in defined and not hasattr(builtins, symbol.get_name())}
    return unbound


def test_onnx_passes_the_checker_and_equals_pytorch_in_onnxruntime(finished_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from dagir.export_job import export_run
    report = export_run(finished_run, "onnx", tmp_path / "model.onnx")
    assert report["matches"] and set(report["max_abs_difference"]) == {"digit", "parity"}
    assert max(report["max_abs_difference"].values()) < 1e-4
    import onnxruntime
    import numpy as np
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["digit", "parity"]
    outputs = session.run(None, {"inputs": np.zeros((5, 64), dtype=np.float32)})  # another batch size
    assert [o.shape for o in outputs] == [(5, 10), (5, 2)]


def test_bad_export_requests_exit_2(finished_run, tmp_path):
    code, _, stderr = dagir("export", str(tmp_path), "--format", "onnx", "-o", str(tmp_path / "m.onnx"))
    assert code == 2 and "not a finished dagir run" in stderr
    code, _, stderr = dagir("export", str(finished_run), "--format", "tflite", "-o", str(tmp_path / "m"))
    assert code == 2 and "--format: must be one of onnx, torchscript, python" in stderr
    code, _, stderr = dagir("export", str(finished_run), "--format", "torchscript", "-o", str(tmp_path))
    assert code == 2 and "is a folder" in stderr and "Traceback" not in stderr
    before = (finished_run / "compact.py").read_bytes(), (finished_run / "compact.safetensors").read_bytes()
    for name in ("compact.py", "metrics.json"):  # the python format writes the weights beside: compact.safetensors
        code, _, stderr = dagir("export", str(finished_run), "--format", "python", "-o", str(finished_run / name))
        assert code == 2 and "would overwrite the run's own" in stderr and "Traceback" not in stderr
    assert ((finished_run / "compact.py").read_bytes(), (finished_run / "compact.safetensors").read_bytes()) == before


def test_export_replaces_an_existing_file_only_when_told(finished_run, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: mine\n")
    code, _, stderr = dagir("export", str(finished_run), "--format", "python", "-o", str(spec))
    assert code == 2 and f"{spec} exists; pass --overwrite to replace it" in stderr and "Traceback" not in stderr
    assert spec.read_text() == "name: mine\n"
    (tmp_path / "net.safetensors").write_bytes(b"mine")  # the python format's weights, written beside
    code, _, stderr = dagir("export", str(finished_run), "--format", "python", "-o", str(tmp_path / "net.py"))
    assert code == 2 and "net.safetensors exists" in stderr and not (tmp_path / "net.py").exists()
    code, _, stderr = dagir("export", str(finished_run), "--format", "python", "-o", str(tmp_path / "net.py"),
                            "--overwrite")
    assert code == 0, stderr
    assert (tmp_path / "net.safetensors").read_bytes() != b"mine"
