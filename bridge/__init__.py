"""openpi-triton bridge (importable as ``openpi_bridge``): robots' protocols in front of Triton gRPC.

One asyncio process serves openpi's WebSocket protocol (``openpi_client.WebsocketClientPolicy``) and the
LocalFrame unix socket of the QUIC sidecar, and turns every observation into a Triton gRPC call. It knows
protocols and slots, nothing about models: tensor names, types and robot metadata come from Triton.
"""
