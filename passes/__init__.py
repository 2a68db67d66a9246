"""Compiler passes, one per file; importing this package registers them all by name."""
from . import attach_gates, build_central, build_cross_stitch, build_cross_task, build_hard_sharing, build_routing, build_single_task, discretize, fit_budget, flow_reduce, flow_restrict, insert_read_io, legalize_types, share_states  # noqa: F401
