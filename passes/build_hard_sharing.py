"""`build-hard-sharing`: the hard parameter sharing baseline, one shared trunk with a head per task."""
from __future__ import annotations

from dagir.ir import IR
from dagir.pass_manager import register_pass

from .build_single_task import ChainBuild


@register_pass
class BuildHardSharing(ChainBuild):
    """A stem and one chain `h1..hN` shared by every task (`task=None`), every head at its end.

    No edge is gated, so every task computes the same state at every trunk node and the lowering
    computes it once: the classic shared-bottom network, with the layers `legalize-types` chooses.
    """

    name = "build-hard-sharing"

    def run(self, ir: IR) -> IR:
        out = ir.copy()
        tasks = out.task_names
        self.add_stem(out, "stem", tasks, owner=None)
        chain = self.add_chain(out, "", "stem", tasks, owner=None)
        for task in tasks:
            self.add_head(out, task, chain[-1])
        out.max_span = 1
        return out
