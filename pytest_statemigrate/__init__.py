"""pytest-statemigrate: expensive fixture values built once, verified, served by node agents.

Public API: :func:`state` marks a fixture as managed; everything else is reached through pytest
options and the ``statemigrate`` command.
"""

from __future__ import annotations

from ._spec import StateSpec, state

__version__ = "0.1.0"

__all__ = ["StateSpec", "__version__", "state"]
