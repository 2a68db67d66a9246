"""dagir: a compiler for multi-task network search spaces.

    spec = load_spec("examples/multimnist.yaml")     # YAML -> validated Spec
    ir = compile_spec(spec)                           # Spec -> gated supernet IR (verified passes)
    module = lower_supernet(ir)                       # IR -> torch.fx.GraphModule
"""
from __future__ import annotations

from typing import Any

from .errors import SpecError, UserError, VerificationError
from .ir import IR
from .pipeline import compile_spec, seed_ir
from .spec import Spec, load_spec
from .verify import verify

__all__ = ["IR", "Spec", "SpecError", "UserError", "VerificationError", "compile_spec", "load_spec",
           "lower_supernet", "seed_ir", "verify"]


def lower_supernet(ir: IR, **options: Any):
    """Lower `ir` to a torch.fx GraphModule (imports torch only when called)."""
    from dagir.backends.torch_supernet import lower_supernet as lower
    return lower(ir, **options)
