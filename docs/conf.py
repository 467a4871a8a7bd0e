"""Sphinx configuration of the docs site: ``tox -e docs`` (warnings are errors).

The pages are the Markdown files of this directory (MyST); the options page is completed at
build time with the table of pytest_statemigrate/options.py, the same table pytest --help and
the README show.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_statemigrate import __version__, options  # noqa: E402

project = "pytest-statemigrate"
author = "The pytest-statemigrate developers"
copyright = "2026, The pytest-statemigrate developers"
release = version = __version__

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 4  # links to sections, as GitHub makes them (#the-terminal-summary)
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = f"pytest-statemigrate {release}"
html_static_path = ["_static"]

#: Where the options page has its table.
TABLE_MARK = "<!-- the options table, generated from pytest_statemigrate/options.py -->"


def _source_read(app: Any, docname: str, source: list[str]) -> None:
    if docname == "options":
        if TABLE_MARK not in source[0]:
            raise RuntimeError(f"docs/options.md lost its mark {TABLE_MARK!r}")
        source[0] = source[0].replace(TABLE_MARK, options.markdown(docs=""))


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _source_read)
    return {"parallel_read_safe": True}
