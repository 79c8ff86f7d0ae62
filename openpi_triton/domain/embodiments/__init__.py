"""Robot embodiments. Adding one: a module with an :class:`Embodiment` subclass declaring its cameras
(``ImageField``: key path, model slot, layout, required), state vectors (``StateField``), action width and,
if needed, ``assemble_state`` / ``outputs`` conversions; then register it in ``EMBODIMENTS`` and give it
configs in :mod:`openpi_triton.domain.configs`.
"""

from openpi_triton.domain.embodiments.aloha import Aloha
from openpi_triton.domain.embodiments.base import Embodiment, ImageField, RobotFrame, StateField
from openpi_triton.domain.embodiments.droid import Droid
from openpi_triton.domain.embodiments.libero import Libero

EMBODIMENTS: dict[str, Embodiment] = {e.name: e for e in (Aloha(), Droid(), Libero())}

__all__ = ["EMBODIMENTS", "Embodiment", "ImageField", "RobotFrame", "StateField"]
