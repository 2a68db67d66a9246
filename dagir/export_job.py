"""`dagir export OUT --format onnx|torchscript|python -o FILE`: a finished run's compact network in
the format another tool loads (DESIGN §7).

- `python`: the standalone `compact.py` (needs torch only) with its weights beside it;
- `torchscript`: `torch.jit.trace` of the compact network, loadable with `torch.jit.load` and no
  dagir installed; outputs a dict {task: tensor};
- `onnx`: `torch.onnx.export`, one output per task named after it, with a dynamic batch size;
  checked with `onnx.checker` and run with onnxruntime against the PyTorch outputs on a batch of
  the run's test inputs (needs the `export` extra: `pip install dagir[export]`).

Every format is compared with the PyTorch module on the same inputs, and the largest absolute
difference per task is reported (and returned).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

FORMATS = ("onnx", "torchscript", "python")
TOLERANCE = 1e-4


def export_run(out: Path, fmt: str, target: Path, *, batch: int = 8, overwrite: bool = False) -> dict[str, Any]:
    """Export the compact network of the run in `out` to `target` (an existing file only with
    `overwrite`); returns the largest absolute difference per task between the export and the
    PyTorch module."""
    from dagir.backends.torch_export import load_compact

    from .evaluate_job import run_folder_spec
    from .run_folder import output_file, refuse_a_run_file

    if fmt not in FORMATS:
        raise UserError(f"--format: must be one of {', '.join(FORMATS)} (got {fmt!r})")
    spec = run_folder_spec(Path(out))
    module, ir = load_compact(Path(out))
    module.eval()
    inputs = example_inputs(spec, batch)
    with torch.no_grad():
        expected = {task: value.detach() for task, value in module(inputs).items()}
    target = output_file(target)
    for path in [target, target.with_suffix(".safetensors")] if fmt == "python" else [target]:
        refuse_a_run_file(path, out)
        if path.exists() and not overwrite:
            raise UserError(f"-o {target}: {path} exists; pass --overwrite to replace it")
    exporter = {"onnx": _onnx, "torchscript": _torchscript, "python": _python}[fmt]
    got = exporter(module, inputs, target, Path(out), list(expected))
    differences = {task: float((got[task] - expected[task]).abs().max()) for task in expected}
    return {"format": fmt, "file": str(target), "max_abs_difference": differences,
            "matches": all(d <= TOLERANCE for d in differences.values())}


def example_inputs(spec, batch: int) -> torch.Tensor:
    """A batch of the run's own test inputs (the shape and range the network was trained on)."""
    from .datasets import load_spec_data
    data = load_spec_data(spec)
    return data.test.inputs[:batch].to(torch.float32)


def _torchscript(module, inputs, target: Path, out: Path, tasks: list[str]) -> dict[str, torch.Tensor]:
    import warnings
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; it is still what many servers load
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, (inputs,), strict=False, check_trace=False)
        traced.save(str(target))
        loaded = torch.jit.load(str(target))
    with torch.no_grad():
        return {task: value for task, value in loaded(inputs).items()}


def _onnx(module, inputs, target: Path, out: Path, tasks: list[str]) -> dict[str, torch.Tensor]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("--format onnx needs onnx and onnxruntime: pip install 'dagir[export]'") from None

    class Outputs(torch.nn.Module):  # ONNX has positional outputs: the tasks in order, named after them
        def __init__(self) -> None:
            super().__init__()
            self.network = module

        def forward(self, x):
            outputs = self.network(x)
            return tuple(outputs[task] for task in tasks)

    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(Outputs().eval(), (inputs,), str(target), input_names=["inputs"], output_names=tasks,
                      dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False, verbose=False)
    onnx.checker.check_model(onnx.load(str(target)))
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    values = session.run(tasks, {"inputs": inputs.numpy()})
    return {task: torch.from_numpy(value) for task, value in zip(tasks, values)}


def _python(module, inputs, target: Path, out: Path, tasks: list[str]) -> dict[str, torch.Tensor]:
    """The standalone source as FILE (generated anew from the compact IR: no file of the run folder
    is executed), the weights beside it; imported in a fresh namespace to check it."""
    import importlib.machinery
    import importlib.util

    from dagir.backends.torch_export import WEIGHTS_FILE, compact_source
    from dagir.ir_io import read_ir
    from dagir.run_folder import write_text
    write_text(target, compact_source(module, read_ir(out / "compact.json")))
    weights = target.with_suffix(".safetensors")
    shutil.copyfile(out / WEIGHTS_FILE, weights)
    source = importlib.machinery.SourceFileLoader(f"dagir_export_{target.stem}", str(target))
    standalone = importlib.util.module_from_spec(importlib.util.spec_from_loader(source.name, source))
    source.exec_module(standalone)
    network = standalone.load(weights)
    network.eval()
    with torch.no_grad():
        return dict(network(inputs))
