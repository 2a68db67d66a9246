"""The checks of a spec that read across its sections and need modules above `dagir.spec` (the data
registry, the pipelines, the methods): the input against the stages, the data set and its tasks, both
pipelines, the network's size against `limits`, the search strategy's decisions, a budget any network
of the space can meet, and every bench method. `load_spec` runs them, so a bad spec is refused, with
its location, before anything trains.
"""
from __future__ import annotations

import math

from .errors import DataFieldError, SpecError, UserError
from .spec import Spec, SpecSource


def check_spec_semantics(spec: Spec, source: SpecSource, *, methods: bool = True) -> None:
    """Checks across sections: the input type against the stages, the data set and tasks, both
    pipelines, and (with `methods`) that every bench method is built in or a spec file."""
    from .datasets import dataset_info  # the registry knows each data set's input type

    info = dataset_info(spec.data.dataset)
    if info is None:
        from .datasets import known_datasets
        raise source.error(("data", "dataset"), f"unknown dataset {spec.data.dataset!r} "
                                                f"(known: {', '.join(known_datasets())})")
    from dataclasses import replace

    from .datasets import dataset_tasks, resolve_options
    from .datasets.options import DataOptionError
    from .tasks import task_misfits

    try:
        options = resolve_options(spec.data.dataset, spec.data.options, spec.data.val_split)
    except DataOptionError as err:
        raise source.error(err.field, f"{err.message} (data set '{err.dataset}')") from None

    data_field = ("data", "dataset") if info.plugin is not None else ("data", "root")  # where the data's errors point
    if info.tasks_for is not None:  # the tasks depend on the data on disk (Omniglot's alphabets)
        try:
            kinds, classes = dataset_tasks(spec.data.dataset, spec.data.options, spec.data.root,
                                           [task.name for task in spec.tasks])
        except UserError as err:  # the loader names data.root itself; the location says it once
            field = err.field if isinstance(err, DataFieldError) else data_field
            raise source.error(field, str(err).removeprefix("data.root: ")) from None
        info = replace(info, task_kinds=kinds, task_classes=classes)
    misfits = task_misfits(info, spec.tasks)
    if misfits:
        first = misfits[0]
        unset = "dataset" not in spec.data.model_fields_set  # the default data set, which the spec never named
        raise source.error(("tasks", first.index, first.field), first.message + (
            f"; the spec names no data.dataset, and {spec.data.dataset} is the default" if unset else ""))
    for index, task in enumerate(spec.tasks):  # a task that leaves out `classes` has the data set's
        if task.has_classes and task.classes is None:
            if task.name not in info.task_classes:
                raise source.error(("tasks", index), f"a {task.kind} task needs 'classes' (data set "
                                                     f"'{info.name}' does not say how many {task.name!r} has)")
            task.classes = max(info.task_classes[task.name], 2 if task.kind == "classification" else 1)
    try:
        shape = info.input_shape(options, spec.data.root, [task.name for task in spec.tasks])
    except UserError as err:
        raise source.error(data_field, str(err).removeprefix("data.root: ")) from None
    if spec.network.input is not None and tuple(spec.network.input.shape) != shape:
        raise source.error(("network", "input", "shape"), f"the data set '{info.name}' gives inputs of shape "
                                                          f"{list(shape)}, not {spec.network.input.shape}; "
                                                          "remove network.input, or change the data options")
    stages = spec.network.central.stages
    if len(shape) == 3:
        stride = spec.network.stem.stride
        smallest = math.ceil(min(shape[1], shape[2]) / stride)
        if 2 ** (stages - 1) > smallest:
            raise source.error(("network", "central", "stages"),
                               f"{stages} stages halve the resolution {stages - 1} times, more than the "
                               f"input {shape[1]}x{shape[2]} allows after the stem's stride {stride} "
                               f"(at most {1 + int(math.log2(smallest))} stages)")
    if spec.network.central.edge_op == "conv" and len(shape) != 3:
        hint = " (an image array needs a channel axis: [N, 1, H, W] for grey images)" if len(shape) == 2 else ""
        raise source.error(("network", "central", "edge_op"),
                           f"'conv' needs image inputs; the input is {list(shape)}{hint}")
    if spec.network.central.edge_op == "mlp" and len(shape) == 3:
        raise source.error(("network", "central", "edge_op"), f"'mlp' needs vector inputs; the input is {list(shape)}")
    from .methods import method_file
    from .pipeline import after_search_pipeline, before_search_pipeline

    passes = before_search_pipeline(spec)
    built = _check_size_and_strategy(spec, source, passes)
    after = after_search_pipeline(spec)  # after the size checks: pricing `single_task` builds the single-task networks
    _check_budget_is_reachable(source, built, after)
    budget = spec.search.budget
    if budget.search_rate > 0 and not (budget.macs or budget.parameters):
        raise source.error(("search", "budget", "search_rate"), "holding a budget inside the search needs one: "
                                                                "set search.budget.macs or .parameters")
    if (budget.macs or budget.parameters) and not any(p.name == "fit-budget" for p in after):
        raise source.error(("search", "budget"), "a budget is met by the fit-budget pass, and "
                                                 "pipeline.after_search has none: add fit-budget after flow-reduce")
    for index, method in enumerate(spec.bench.methods if methods else []):
        try:
            method_file(method, spec)
        except SpecError as err:
            raise source.error(("bench", "methods", index), err.message) from None


def _check_budget_is_reachable(source: SpecSource, built, after: list) -> None:
    """A budget below what any network of the space costs (`compact_cost.cost_floor`) cannot be met:
    refused now, not after the search (fit-budget would keep one path per task and say so)."""
    from .compact_cost import cost_floor

    fit = next((p for p in after if p.name == "fit-budget"), None)
    limits = {name: getattr(fit, name, None) for name in ("macs", "parameters")}
    if fit is None or not any(limits.values()):
        return
    floor = cost_floor(built)
    for name, limit in limits.items():
        if limit is not None and limit < floor[name]:
            unit = "MACs per sample" if name == "macs" else "parameters"
            raise source.error(("search", "budget", name), f"{limit:,} {unit} is less than any network of this "
                               f"space costs: its stem and each task's head with its cheapest read-out take "
                               f"{floor[name]:,}")


def _check_size_and_strategy(spec: Spec, source: SpecSource, passes: list):
    """The network's size against `limits`: nodes and widths first, then (building the IR, now
    cheap) its parameters; and that the search strategy has the decisions it needs. Returns the IR."""
    limits, network = spec.limits, spec.network
    if network.central.nodes > limits.nodes:
        raise source.error(("network", "central", "nodes"), f"{network.central.nodes:,} nodes are more than "
                           f"limits.nodes ({limits.nodes:,}); raise limits.nodes to allow them")
    nodes, span = network.central.nodes, network.flow_restriction.max_span
    span = nodes - 1 if span is None else min(span, nodes - 1)
    edges = span * nodes - span * (span + 1) // 2 + 2 * nodes * (1 + len(spec.tasks))  # the central DAG's
    if edges > limits.edges:
        raise source.error(("network", "flow_restriction", "max_span"), f"{nodes:,} nodes with max_span {span:,} "
                           f"make about {edges:,} edges, more than limits.edges ({limits.edges:,}); lower max_span, "
                           "or raise limits.edges")
    widths = {("network", "stem", "channels"): network.stem.channels, ("network", "heads", "hidden"): network.heads.hidden}
    widths.update({("network", "central", "channels") + ((i,) if isinstance(network.central.channels, list) else ()): c
                   for i, c in enumerate(network.central.stage_channels())})
    for path, width in widths.items():
        if width > limits.width:
            raise source.error(path, f"a width of {width:,} is more than limits.width ({limits.width:,}); "
                                     "raise limits.width to allow it")
    from .ir_stats import count_parameters
    from .pass_manager import PassManager
    from .pipeline import seed_ir

    built = PassManager(passes, verify_each=False).run(seed_ir(spec))
    stage = spec.train.search
    if stage.strategy == "reinforce" and stage.epochs and not any(
            d.kind == "categorical" for d in built.decisions.values()):
        raise source.error(("train", "search", "strategy"), "reinforce samples categorical decisions, and this "
                           "search space has none (its gates are bernoulli): use strategy gradient, or a build "
                           "pass with routes such as build-routing")
    if stage.strategy == "reinforce" and stage.epochs and spec.search.squeeze.kind in ("flow", "cost"):
        raise source.error(("search", "squeeze", "kind"), f"{spec.search.squeeze.kind} weighs each gate of its "
                           "edge, and reinforce squeezes its decisions' probabilities: use binary or entropy")
    if stage.arch_norm == "running" and stage.train_weights and stage.mode == "joint" and stage.strategy == "gradient":
        raise source.error(("train", "search", "arch_norm"), "running needs mode alternating: a joint step trains "
                           "Θ in the same step, and batch norm would keep its warm-up statistics all search long")
    if stage.select_norm_batches and stage.select != "best":
        raise source.error(("train", "search", "select_norm_batches"), "re-estimates batch norm for the "
                           "discretised networks that `select: best` scores; set train.search.select: best")
    parameters = count_parameters(built)
    if parameters > limits.parameters:
        raise source.error(("network",), f"the search space holds {parameters:,} parameters, more than "
                                         f"limits.parameters ({limits.parameters:,}); raise limits.parameters "
                                         "to allow it")
    return built


def check_data_root(spec: Spec) -> None:
    """A data set read from disk needs `data.root` to be an existing folder (checked before a run)."""
    from .datasets import dataset_info

    from .datasets import check_root

    info = dataset_info(spec.data.dataset)
    if info is None or not info.needs_root:
        return
    try:
        check_root(info, spec.data.root)
    except UserError as err:
        raise spec.error(("data",) if spec.data.root is None else ("data", "root"),
                         str(err).removeprefix("data.root: ")) from None
