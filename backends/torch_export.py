"""Export and load the compact network (DESIGN §6): `compact.py`, standalone source that needs only
torch; `compact.safetensors`, the weights; `compact.json`, the compact IR. Loading rebuilds the
module from the IR and loads the weights strictly; nothing from the folder is executed or unpickled.

    export_compact(compact, ir, Path("out"))   # compact.py, compact.safetensors, compact.json
    compact, ir = load_compact(Path("out"))
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch
from torch import fx, nn

from dagir.errors import UserError
from dagir.ir import IR

from .torch_aggregations import (GateAggregation, MixAggregation, NddrAggregation, gate_stack, gated_slots,
                                 stack_blocks)
from .torch_compact import PerStateCopy, PerStateNorm, lower_compact

WEIGHTS_FILE, CODE_FILE, IR_FILE = "compact.safetensors", "compact.py", "compact.json"


# -- export and load ------------------------------------------------------------------------------
def _module_source(module: nn.Module) -> str:
    """A constructor expression for one of the layers the compact module uses (plain torch.nn)."""
    if isinstance(module, nn.Sequential):
        children = ", ".join(f"({name!r}, {_module_source(child)})" for name, child in module.named_children())
        return f"nn.Sequential(OrderedDict([{children}]))"
    if isinstance(module, PerStateNorm):
        return f"PerStateNorm({_module_source(module.op)}, {len(module.norms) + 1})"
    if isinstance(module, PerStateCopy):
        return f"PerStateCopy({_module_source(module.op)}, {len(module.copies) + 1})"
    if isinstance(module, (NddrAggregation, GateAggregation, MixAggregation)):
        args = ", ".join(f"{k}={v!r}" for k, v in module.config.items())
        return f"{type(module).__name__}({args})"
    if type(module).__name__ == "Scale":  # torch_ops.Scale: its value is a weight, loaded afterwards
        return "Scale(1.0)"
    if type(module).__name__ == "UpsampleConv":
        return f"UpsampleConv({module.conv.in_channels}, {module.conv.out_channels}, {tuple(module.size)!r})"
    if isinstance(module, nn.Conv2d):
        return (f"nn.Conv2d({module.in_channels}, {module.out_channels}, {module.kernel_size}, "
                f"stride={module.stride}, padding={module.padding}, bias={module.bias is not None})")
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return (f"nn.{type(module).__name__}({module.num_features}, eps={module.eps}, momentum={module.momentum}, "
                f"affine={module.affine}, track_running_stats={module.track_running_stats})")
    if isinstance(module, nn.LayerNorm):
        return f"nn.LayerNorm({tuple(module.normalized_shape)!r}, eps={module.eps})"
    if isinstance(module, nn.GroupNorm):
        return f"nn.GroupNorm({module.num_groups}, {module.num_channels}, eps={module.eps})"
    if isinstance(module, nn.Linear):
        return f"nn.Linear({module.in_features}, {module.out_features}, bias={module.bias is not None})"
    if isinstance(module, nn.AvgPool2d):
        return (f"nn.AvgPool2d({module.kernel_size!r}, stride={module.stride!r}, padding={module.padding!r}, "
                f"ceil_mode={module.ceil_mode}, count_include_pad={module.count_include_pad})")
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return f"nn.AdaptiveAvgPool2d({module.output_size!r})"
    if isinstance(module, nn.Flatten):
        return f"nn.Flatten({module.start_dim}, {module.end_dim})"
    if type(module) in (nn.ReLU, nn.Identity):
        return f"nn.{type(module).__name__}()"
    raise TypeError(f"cannot export a {type(module).__name__} to standalone code")


_OP_CLASSES = ("Scale", "UpsampleConv")

_LOAD_SOURCE = '''
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """The tensors of a .safetensors file (the format is a JSON header and raw little-endian data)."""
    with open(path, "rb") as handle:
        data = handle.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = bytearray(data[8 + length:])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        flat = torch.frombuffer(body, dtype=torch.uint8, count=end - start, offset=start) if end > start \\
            else torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(info["shape"]).clone()
    return tensors


def load(path):
    """A CompactNetwork in eval mode with the weights of `path` (compact.safetensors), in their dtype."""
    network = CompactNetwork()
    network.load_state_dict(read_safetensors(path), strict=True, assign=True)
    return network.eval()
'''


def compact_source(module: fx.GraphModule, ir: IR) -> str:
    """The standalone Python source of `module`: torch only, `CompactNetwork` and `load`."""
    used = {type(child) for child in module.modules()}
    # layer classes of torch_ops beyond plain torch.nn (Scale, UpsampleConv) travel as source too
    local = [cls for cls in used if cls.__module__ == "dagir.backends.torch_ops" and cls.__name__ in _OP_CLASSES]
    helpers = [inspect.getsource(cls) for cls in (NddrAggregation, GateAggregation, MixAggregation, PerStateNorm, PerStateCopy,
                                                  *sorted(local, key=str)) if cls in used]
    if used & {NddrAggregation, GateAggregation, MixAggregation}:  # what their supernet-side `gated_forward` calls, so the copy is whole
        helpers = [inspect.getsource(helper) for helper in (stack_blocks, gate_stack, gated_slots)] + helpers
    layers = "\n".join(f"        self.{name} = {_module_source(child)}" for name, child in module.named_children())
    forward = module.graph.python_code(root_module="self").src
    forward = re.sub(r";  [\w =]+ = None$", "", forward, flags=re.MULTILINE).strip()  # fx's early frees
    tasks = ", ".join(ir.task_names)
    header = (f'"""Compact network {ir.name!r}, compiled by dagir: one forward pass serves the tasks {tasks}.\n\n'
              "States shared by several tasks are computed once. Standalone: needs only torch.\n\n"
              f"    network = load({WEIGHTS_FILE!r})\n"
              "    outputs = network(x)        # {task: tensor}\n"
              '"""\n')
    return "\n".join([
        header, "import copy", "import json", "import struct", "from collections import OrderedDict", "",
        "import torch", "from torch import Tensor, nn", "", "", *helpers, "",
        "class CompactNetwork(nn.Module):",
        '    """The searched network; submodules are named after the IR (edge_h2_h4, node_h3, head_<task>)."""',
        "", "    def __init__(self):", "        super().__init__()", layers, "",
        "    " + forward.replace("\n", "\n    "), "", _LOAD_SOURCE])


def export_compact(module: fx.GraphModule, ir: IR, out_dir: Path) -> None:
    """Write `compact.py` (standalone source), `compact.safetensors` (weights) and `compact.json`
    (the IR) to `out_dir`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    (out_dir / CODE_FILE).write_text(compact_source(module, ir), encoding="utf-8")
    (out_dir / IR_FILE).write_text(ir.to_json(), encoding="utf-8")


def load_compact(out_dir: Path, *, dtype: torch.dtype = torch.float32) -> tuple[fx.GraphModule, IR]:
    """Rebuild the compact module from `out_dir/compact.json` and load `compact.safetensors` strictly.
    Nothing from the folder is executed or unpickled; bad or missing files raise `UserError`."""
    from safetensors.torch import load_file

    from dagir.ir_io import read_ir

    out_dir = Path(out_dir)
    ir = read_ir(out_dir / IR_FILE)
    try:
        module = lower_compact(ir, dtype=dtype)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{out_dir / IR_FILE}: cannot build the compact network ({err})") from None
    weights = out_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{weights}: no such file")
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors reports a corrupt file with its own exception types
        raise UserError(f"{weights}: not a readable safetensors file ({err})") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{weights}: weights do not match {out_dir / IR_FILE} ({err})") from None
    return module, ir
