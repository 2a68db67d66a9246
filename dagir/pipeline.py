"""The method, as pipelines of passes. Read this file to see what dagir does to a search space.

Before search, a spec becomes a gated supernet:
    build-central    the stem, hidden nodes h_1..h_N in stages, candidate edges h_i -> h_j, heads
    flow-restrict    cut the long skip connections: keep h_i -> h_j only if j - i <= max_span
    insert-read-io   read-in edges x0 -> h_j and read-out edges h_j -> every head
    legalize-types   choose each edge's op from the types at its ends (resampling between stages)
    attach-gates     a gate logit per task on every searchable edge

After search, with the trained gates imported, the supernet becomes one compact network:
    discretize       keep an edge for a task iff its gate >= threshold (a path per task is kept)
    flow-reduce      drop the edges that carry the least flow while (1 - ε) of it remains
    fit-budget       drop the least-flow task edges until the network fits `search.budget` (MACs, parameters)
    share-states     compute once every state two tasks have in common

Other search spaces replace the build pass (`build-cross-task` for MTL-NAS, and the baselines'
`build-single-task`, `build-hard-sharing`, `build-cross-stitch`; DESIGN §10, `dagir.methods`) and
reuse the rest. Every pass's options come from the pipeline text, over what the spec says of them
(`spec_options`, the one place that maps spec fields to pass options).
"""
from __future__ import annotations

from typing import Any, Sequence

from .ir import IR, Node, Task, TensorType
from .pass_manager import Pass, PassCallback, PassManager, PipelineError, names_pass, parse_pipeline, registered_passes
from .spec import Spec, input_shape

BEFORE_SEARCH = ["build-central", "flow-restrict", "insert-read-io", "legalize-types", "attach-gates"]
AFTER_SEARCH = ["discretize", "flow-reduce", "fit-budget", "share-states"]


def seed_ir(spec: Spec) -> IR:
    """The IR a build pass starts from: the tasks and the input node."""
    ir = IR(name=spec.name, tasks=[Task(t.name, t.kind, t.out_dim, t.weight) for t in spec.tasks])
    ir.add_node(Node("input", "input", TensorType(input_shape(spec))))
    return ir


def spec_options(spec: Spec, *, budget: bool = False) -> dict[str, dict[str, Any]]:
    """Each pass's options as the spec sets them; the pipeline text overrides any of them.
    fit-budget's limits only with `budget=True` (pricing `single_task` builds the single-task networks).

    Every build pass lays out the spec's `network` (stages, widths, stem, heads), so every search
    space built from one spec, the method's and the baselines', has the same layers.
    """
    network, search = spec.network, spec.search
    central, reduction = network.central, search.reduction
    layout = {"nodes": central.nodes, "stages": central.stages, "channels": central.stage_channels(),
              "stem_channels": network.stem.channels, "stem_stride": network.stem.stride,
              "head_hidden": network.heads.hidden}
    options: dict[str, dict[str, Any]] = {name: dict(layout) for name, cls in registered_passes().items()
                                          if cls.builds}
    options["build-central"].update(aggregation=central.aggregation, nddr_start=central.nddr_start,
                                    nddr_norm=central.nddr_norm,
                                    max_span=network.flow_restriction.max_span,
                                    task_stages=central.task_stages, task_copies=central.task_copies)
    options.update({
        "flow-restrict": {"max_span": network.flow_restriction.max_span},
        "insert-read-io": {"read_in": network.read_in, "read_out": network.read_out},
        "legalize-types": {"resample": central.resample},
        "attach-gates": {"init": search.gates.init, "noise": search.gates.init_noise, "seed": spec.seed},
        "discretize": {"threshold": reduction.threshold},
        "flow-reduce": {"flow_budget": reduction.flow_budget, "enabled": reduction.enabled},
        "fit-budget": {**(budget_limits(spec) if budget else {}), "untie": reduction.untie},
        "share-states": {"untie": reduction.untie},
    })
    return options


def budget_limits(spec: Spec) -> dict[str, int | None]:
    """`search.budget` in numbers, `single_task` replaced by what the single-task networks of
    `spec` cost together (their compact MACs or parameters, as the bench's single_task row counts)."""
    budget = spec.search.budget
    limits = {"macs": budget.macs, "parameters": budget.parameters}
    relative = [name for name, limit in limits.items() if limit == "single_task"]
    if relative:
        cost = single_task_cost(spec)
        limits.update({name: cost[name] for name in relative})
    return limits


def single_task_cost(spec: Spec) -> dict[str, int]:
    """The MACs per sample and parameters of the single-task networks built from `spec`'s layout
    (the `single_task` method), counted on their compact IR."""
    from .compact_cost import compact_macs, compact_parameters
    from .methods import method_spec

    single = method_spec(spec, "single_task")  # no fit-budget pass, so no budget of its own
    compact = PassManager(after_search_pipeline(single)).run(compile_spec(single))
    return {"macs": compact_macs(compact)["total"], "parameters": compact_parameters(compact)["total"]}


def spec_pipeline(entries: Sequence[str], spec: Spec, *, needs_build: bool = True) -> list[Pass]:
    """The passes of `entries` (pipeline text), their options defaulting from `spec` (fit-budget's
    limits priced only where `entries` has the pass)."""
    return parse_pipeline(entries, spec_options(spec, budget=names_pass(entries, "fit-budget")),
                          needs_build=needs_build)


def before_search_pipeline(spec: Spec) -> list[Pass]:
    """The spec's own pipeline if it writes one, else the default; options default from the spec."""
    if spec.pipeline.before_search is None:
        return spec_pipeline(BEFORE_SEARCH, spec)
    try:
        return spec_pipeline(spec.pipeline.before_search, spec)
    except PipelineError as err:
        raise spec.error(("pipeline", "before_search"), str(err)) from None


def compile_spec(spec: Spec, *, passes: Sequence[Pass] | None = None, verify_each: bool = True,
                 on_pass: PassCallback | None = None) -> IR:
    """Run the pre-search pipeline on `spec` and return the gated supernet's IR.

    >>> from dagir import load_spec, compile_spec
    >>> ir = compile_spec(load_spec("examples/multimnist.yaml"))  # doctest: +SKIP
    """
    manager = PassManager(passes if passes is not None else before_search_pipeline(spec),
                          verify_each=verify_each, on_pass=on_pass)
    return manager.run(seed_ir(spec))


def after_search_pipeline(spec: Spec) -> list[Pass]:
    """The spec's own after-search pipeline if it writes one, else the default."""
    if spec.pipeline.after_search is not None:
        try:
            return spec_pipeline(spec.pipeline.after_search, spec, needs_build=False)
        except PipelineError as err:
            raise spec.error(("pipeline", "after_search"), str(err)) from None
    return spec_pipeline(AFTER_SEARCH, spec, needs_build=False)
