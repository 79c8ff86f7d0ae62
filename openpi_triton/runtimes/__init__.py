"""The runtimes: one module each, named as the ``runtime`` parameter of ``config.pbtxt`` names it, each with a
``RUNTIME`` (:class:`openpi_triton.runtime_api.RuntimeSpec`). Only runtime modules live here."""
