"""openpi-triton: openpi's pi0 / pi0.5 robot policies served by NVIDIA Triton Inference Server.

Sub-packages:
- ``openpi_triton.native``: this project's own JAX runtime for pi0 / pi0.5 (no openpi import).
- ``openpi_triton.golden``: runs golden-vector folders produced by real openpi against the native runtime.
"""

__version__ = "0.1.0"
