"""Triton Python model ``action``: thin shell; the logic lives in ``openpi_triton.triton.action_model``."""

from openpi_triton.triton.action_model import ActionModel


class TritonPythonModel(ActionModel):
    pass
