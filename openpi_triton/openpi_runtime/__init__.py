"""The ``openpi`` runtime: an adapter over an installed openpi, behind the same seam as the native runtime.

openpi is not on PyPI, so nothing here imports it at module level: :mod:`.environment` imports it on demand
and turns its absence into an error that says which image provides it. :mod:`.train_config` turns an openpi
``TrainConfig`` into the serving description (robot I/O) the Triton models need; :mod:`.policy` runs
openpi's own transforms and model, batched.
"""
