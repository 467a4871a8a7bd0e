"""Sizes as people write them: ``1048576``, ``512M``, ``1.5G``, ``64KiB`` (binary multiples).

Pure; shared by the agent's command line and the plugin's ini keys.
"""

from __future__ import annotations

import re
from typing import Final

_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """``"512M"`` → 536870912.

    :raises ValueError: with a one-line message naming the text and the accepted forms.
    """
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a size; use bytes or a number with K, M, G or T")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def size_text(nbytes: int) -> str:
    """``536870912`` → ``"512M"``: the largest binary unit that divides it (the inverse of
    :func:`parse_size` for such sizes)."""
    for unit in "TGMK":
        if nbytes and nbytes % _UNITS[unit.lower()] == 0:
            return f"{nbytes // _UNITS[unit.lower()]}{unit}"
    return str(nbytes)
