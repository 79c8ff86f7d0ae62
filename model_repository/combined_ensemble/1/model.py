"""Triton Python model ``combined_ensemble`` (BLS): thin shell over ``openpi_triton.triton.combined_model``."""

from openpi_triton.triton.combined_model import CombinedModel


class TritonPythonModel(CombinedModel):
    pass
