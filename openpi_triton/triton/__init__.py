"""Triton side: the local tritonserver launcher, model parameters, tensor naming, the models' execute logic."""
