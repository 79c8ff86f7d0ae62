"""Native JAX runtime: pi0 / pi0.5 action chunks and pi0.5 subtask text, loaded from openpi checkpoints.

Entry points:
- :func:`openpi_triton.native.policy.load_policy` -> :class:`NativePolicy` (batched ``infer_batch``).
- :func:`openpi_triton.native.planner.load_planner` -> :class:`SubtaskPlanner` (batched ``generate``).
"""
