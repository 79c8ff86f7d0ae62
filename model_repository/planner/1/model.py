"""Triton Python model ``planner``: thin shell; the logic lives in ``openpi_triton.triton.planner_model``."""

from openpi_triton.triton.planner_model import PlannerModel


class TritonPythonModel(PlannerModel):
    pass
