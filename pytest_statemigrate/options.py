"""The table of every command-line option and ini key: what pytest registers, what ``pytest
--help`` shows, and the options table of the README and the docs site (:func:`markdown`).

One row per setting, so that the code, ``--help`` and the docs cannot drift: defaults are
taken from :data:`settings.DEFAULTS` and shown in the units people write
(tests/unit/test_options.py checks the README's copy and ``pytest --help``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from nodeagent.units import size_text

from . import settings as st


@dataclass(frozen=True)
class Setting:
    """A command-line option, an ini key, or both, with one text for ``--help``."""

    #: ``--sm-dir``; None for an ini key alone
    flag: str | None
    #: ``statemigrate_dir``; None for a command-line option alone
    ini: str | None
    #: one line for ``pytest --help`` (the default is appended)
    help: str
    #: the docs' "meaning" column (markdown); the help text when empty
    doc: str = ""
    #: the default as the docs show it; taken from DEFAULTS when empty (see :func:`shown`)
    default: str = ""
    #: how the command-line cell shows it (``--sm-dir=DIR``); the flag when empty
    usage: str = ""
    #: words after the ini key in the docs (``(line list; ...)``)
    ini_note: str = ""
    ini_type: str = "string"
    #: argparse keywords for the flag (dest, type, choices, action, metavar)
    arg: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        """Its name in DEFAULTS (``dir`` for ``statemigrate_dir``), when it has one there."""
        name = (self.ini or "").removeprefix("statemigrate_")
        return name if name in st.DEFAULTS else None

    def shown(self) -> str:
        """The default as the docs show it."""
        if self.default:
            return self.default
        value = st.DEFAULTS[self.key] if self.key else None
        if value is None:
            return "none"
        if self.ini and self.ini.endswith("_bytes") and isinstance(value, int):
            return f"`{size_text(value)}`"
        if isinstance(value, float) and value.is_integer():
            return f"`{int(value)}`"
        return f"`{value}`"

    def help_text(self) -> str:
        """The ``--help`` line: the help, then the default where there is one."""
        default = self.shown().strip("`")
        if default in ("none", "off", ""):
            return self.help
        return f"{self.help} (default: {default})"


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "--sm-fixtures",
        "statemigrate_fixtures",
        "fnmatch patterns of fixtures to manage, one a line or separated by spaces or commas; "
        "auto: those earlier runs measured to be worth it; the option replaces the ini key",
        doc="fnmatch patterns of fixtures to manage; `auto` (alone or among patterns): those "
        "earlier runs measured to be worth it ([guide.md](docs/guide.md#auto-let-the-plugin-"
        "choose)); the option replaces the ini list (an empty value, or a pattern that matches "
        "no fixture the selected tests use, is one summary line)",
        usage="--sm-fixtures='a,b*'",
        ini_note="(line list; spaces or commas also separate)",
        ini_type="linelist",
        arg={"type": st.arg_type(st.parse_patterns), "metavar": "PATTERNS"},
    ),
    Setting(
        "--sm-agent",
        "statemigrate_agent",
        "endpoints of long-lived node agents to use instead of one started per run; with "
        "several, a hash ring places each value",
        doc="long-lived agents to use; several are placed by a hash ring "
        "([placement.md](docs/placement.md))",
        default="start one per run",
        usage="--sm-agent=ENDPOINT[,ENDPOINT...]",
        ini_note="(comma list or one a line)",
        arg={"metavar": "ENDPOINT[,ENDPOINT...]"},
    ),
    Setting(
        "--sm-keys",
        "statemigrate_keys",
        "directory of the CURVE client keys (made by `statemigrate keys`) for those agents, "
        "relative to the rootdir; required when one is not ipc:// or loopback",
        doc="CURVE client keys (`client.key_secret`, `server.key`; made by `statemigrate "
        "keys`) for that agent, relative to the rootdir; required when its endpoint is not "
        "ipc:// or loopback, read only when an agent is configured "
        "([security.md](docs/security.md))",
        usage="--sm-keys=DIR",
        arg={"metavar": "DIR"},
    ),
    Setting(
        "--sm-refresh",
        None,
        "rebuild every managed value this run touches, and store the new values",
        default="off",
        arg={"action": "store_true", "default": False},
    ),
    Setting(
        "--sm-stats-json",
        None,
        "write the run's statistics (the summary's numbers) as JSON to PATH",
        doc="write the run's statistics (the summary's numbers) as JSON (a path that cannot be "
        "written is one summary line; the exit status stays the tests')",
        usage="--sm-stats-json=PATH",
        arg={"metavar": "PATH"},
    ),
    Setting(
        "--sm-report",
        None,
        "write the run report (an HTML page: per fixture, the prefetch plan, the trend) to PATH",
        doc="write the run report, one self-contained HTML page, at the end of the run: per "
        "fixture builds, hits, seconds saved, bytes, refusals and rebuilds; the prefetch plan "
        "against the test order; the trend over the kept sessions (`statemigrate report` "
        "writes it from the last run's files; [esg.md](docs/esg.md#the-run-report))",
        usage="--sm-report=PATH",
        arg={"metavar": "PATH"},
    ),
    Setting(
        "--sm-dir",
        "statemigrate_dir",
        "store directory, relative to the rootdir",
        doc="store directory, relative to the rootdir; one that cannot be made or written in "
        "(read-only) leaves the run unmanaged, as plain pytest runs it, and the summary says "
        "why",
        usage="--sm-dir=DIR",
        arg={"metavar": "DIR"},
    ),
    Setting(
        None,
        "statemigrate_store",
        "a tier-3 persistent store for the embedded agent: a directory or an fsspec URL such "
        "as s3://bucket/prefix, shared by machines",
        doc="a tier-3 persistent store for the embedded agent: a directory or an fsspec URL "
        "such as `s3://bucket/prefix`, shared by machines; a URL needs the `url` extra, "
        "`s3://` the `s3` extra ([store.md](docs/store.md))",
    ),
    Setting(None, "statemigrate_max_value_bytes", "larger values are built, not stored"),
    Setting(None, "statemigrate_ram_bytes", "RAM tier budget of the embedded agent"),
    Setting(None, "statemigrate_disk_bytes", "disk tier size limit of the embedded agent"),
    Setting(
        None,
        "statemigrate_lease_seconds",
        "longest wait for a value another process builds",
    ),
    Setting(
        None,
        "statemigrate_timeout",
        "seconds one agent request may take before the agent counts as down",
        doc="seconds one agent request may take before the agent counts as down (an agent no "
        "connection can be made to counts as down after 2 s)",
    ),
    Setting(
        "--sm-record",
        None,
        "record the execution state graph even when nothing is managed (for `statemigrate "
        "suggest`)",
        default="off",
        arg={"action": "store_true", "default": False},
    ),
    Setting(None, "statemigrate_history", "sessions the execution state graph keeps"),
    Setting(
        None,
        "statemigrate_auto_seconds",
        "with auto: the least setup seconds per session that make a fixture worth managing",
    ),
    Setting(
        None,
        "statemigrate_write_check_bytes",
        "managed values up to this size are checked for mutation by each test that uses them; "
        "0 turns it off",
    ),
    Setting(None, "statemigrate_partition_bytes", "target size of one state partition"),
    Setting(
        "--sm-partitioner",
        "statemigrate_partitioner",
        "how the execution state graph is partitioned: metis or spectral (spectral needs the "
        "spectral extra)",
        doc="how the graph is partitioned (spectral, also used when pymetis cannot be "
        "imported, needs the `spectral` extra: `pip install 'pytest-statemigrate[spectral]'`)",
        usage="--sm-partitioner=metis\\|spectral",
        arg={"choices": st.PARTITIONERS},
    ),
    Setting(
        "--sm-prefetch",
        "statemigrate_prefetch",
        "before each test, have the agent load what the next tests need into its RAM: on or off",
        doc="before each test, have the agent load what the next tests need into its RAM "
        "([guide.md](docs/guide.md#prefetching-state-in-ram-before-the-test-that-needs-it))",
        usage="--sm-prefetch=on\\|off",
        arg={"choices": st.SWITCHES},
    ),
    Setting(
        "--sm-plan",
        None,
        "also write the run's migration plan as JSON to PATH (the last plan is always in "
        ".statemigrate/plan.json; `statemigrate plan` shows it)",
        doc="also write the run's migration plan as JSON to PATH (the last plan is always in "
        "`.statemigrate/plan.json`)",
        usage="--sm-plan=PATH",
        arg={"metavar": "PATH"},
    ),
    Setting(
        None,
        "statemigrate_eviction",
        "what the plan evicts from an agent's RAM to make room: aggressive, belady or lru",
        doc="what the plan evicts from an agent's RAM to make room: the value used farthest in "
        "the future, early enough to load the next one before its test (`aggressive`), only "
        "when a test needs the room (`belady`: fewest loads, but its loads wait), or the least "
        "recently used (`lru`)",
    ),
    Setting(
        None,
        "statemigrate_lookahead_tests",
        "a prefetch is issued at most this many tests before its use",
    ),
    Setting(
        None,
        "statemigrate_lookahead_bytes",
        "bytes loaded ahead of their use per agent; 0: the agent's RAM budget",
    ),
    Setting(
        "--sm-shard",
        "statemigrate_shard",
        "run CI shard I of N (1-based), chosen by state affinity and duration; auto: the shard "
        "the CI system's variables name, when something is managed and no other splitter is "
        "active; off",
        doc="run CI shard I of N (1-based), chosen by state affinity and duration; `auto`: the "
        "shard Bazel, GitLab CI or CircleCI names in its variables, when something is managed "
        "and no other splitter is active ([sharding.md](docs/sharding.md))",
        usage="--sm-shard=I/N\\|auto\\|off",
        arg={"type": st.arg_type(st.parse_shard), "metavar": "I/N"},
    ),
    Setting(
        None,
        None,
        "",
        doc="pytest-xdist gives each worker the tests that share its state, each worker in "
        "collection order as with `--dist load`; idle workers steal only tests collected after "
        "their last one ([sharding.md](docs/sharding.md))",
        usage="`--dist statemigrate` (with `-n`)",
    ),
    Setting(
        None,
        "statemigrate_affinity",
        "on: `pytest -n N` without --dist schedules tests by state affinity (--dist "
        "statemigrate) while something is managed; off: xdist's --dist load",
        doc="`pytest -n N` with no `--dist` means `--dist statemigrate` while something is "
        "managed (the header says so); `off`, or naming a mode such as `--dist load`, keeps "
        "xdist's choice",
    ),
)


def dest(setting: Setting) -> str:
    """The option's attribute on ``config.option``: ``--sm-dir`` → ``sm_dir``."""
    assert setting.flag is not None
    return setting.flag.removeprefix("--").replace("-", "_")


def register(parser: Any) -> None:
    """Add every option and ini key to pytest's ``parser``."""
    group = parser.getgroup("statemigrate", "pytest-statemigrate: managed fixture state")
    for setting in SETTINGS:
        if setting.flag is not None:
            keywords = {"default": None, **setting.arg}
            group.addoption(setting.flag, dest=dest(setting), help=setting.help_text(), **keywords)
        if setting.ini is not None:
            parser.addini(setting.ini, setting.help_text(), type=setting.ini_type)


def markdown(docs: str = "docs/") -> str:
    """The options table, its links into the docs relative to ``docs`` (the README holds a
    copy with the default; the docs site is built with ``""``)."""
    rows = ["| command line | ini key | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        usage = s.usage or s.flag or ""
        if usage and "`" not in usage:
            usage = f"`{usage}`"
        ini = f"`{s.ini}`" + (f" {s.ini_note}" if s.ini_note else "") if s.ini else ""
        default = s.shown() if (s.flag or s.ini) else ""
        meaning = (s.doc or s.help).replace("](docs/", f"]({docs}")
        rows.append(f"| {usage} | {ini} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"
