"""nodeagent: the process that holds pytest-statemigrate's storage tiers.

It never imports pytest or the plugin and never unpickles: values are opaque bytes.
"""

from __future__ import annotations

from typing import Final

from nodeagent.protocol import PROTOCOL_VERSION

__version__: Final = "0.1.0"

__all__ = ["PROTOCOL_VERSION", "__version__"]
