"""What robots' protocols and the Triton models both stand on, and nothing else: I/O tensor names, the image
rules robots are held to, the robot metadata a served model config implies. Imports no runtime (no JAX, no
PIL, nothing of ``openpi_triton.native`` or ``openpi_triton.openpi_runtime``): the bridge stands on this
package and the protocols only."""
