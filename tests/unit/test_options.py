"""The one table of options and ini keys (options.py) against what it feeds: ``pytest --help``,
the README's options table, and the defaults the settings use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nodeagent.units import parse_size
from pytest_statemigrate import options
from pytest_statemigrate import settings as st

ROOT = Path(__file__).parents[2]


def test_the_readme_holds_the_generated_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert options.markdown() in readme, (
        "README.md's options table differs from options.markdown(): paste "
        "`python -c 'from pytest_statemigrate import options; print(options.markdown())'`"
    )


def test_every_default_is_shown_as_the_settings_use_it() -> None:
    shown = {s.key: s.shown().strip("`") for s in options.SETTINGS if s.key}
    assert set(shown) == set(st.DEFAULTS)  # every default has its row
    for key, text in shown.items():
        value = st.DEFAULTS[key]
        if key.endswith("_bytes"):
            assert parse_size(text) == value, key
        elif isinstance(value, (int, float)):
            assert float(text) == value, key
        else:
            assert text == value, key


def test_pytest_help_lists_exactly_the_table(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "statemigrate", "--help")
    text = result.stdout.str()
    flags = set(re.findall(r"^  (--sm-[a-z-]+)", text, re.MULTILINE))
    inis = set(re.findall(r"^  (statemigrate_[a-z_]+) \(", text, re.MULTILINE))
    assert flags == {s.flag for s in options.SETTINGS if s.flag}
    assert inis == {s.ini for s in options.SETTINGS if s.ini}
    # each with its default, where it has one
    assert re.search(
        r"statemigrate_ram_bytes \(string\):\s+RAM tier budget .* \(default: 1G\)", text
    )
