"""Settings: one frozen object built from command-line options and ini keys.

Every tunable's default sits in :data:`DEFAULTS`; options.py holds the table of the options and
ini keys that set them, with their texts (``--help``, the README, the docs). Bad values fail
with one line naming the option and the fix.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nodeagent.units import parse_size

if TYPE_CHECKING:
    from nodeagent.curve import ClientKeys

    from .shard import ShardSpec

DEFAULTS: Final[Mapping[str, Any]] = {
    "dir": ".statemigrate",  # store directory, relative to the rootdir
    "max_value_bytes": 256 * 2**20,  # 256 MiB: larger values are built, not stored
    "ram_bytes": 2**30,  # 1 GiB: RAM tier of the embedded agent
    "disk_bytes": 4 * 2**30,  # 4 GiB: diskcache tier of the embedded agent
    "lease_seconds": 600.0,  # how long another process waits for a value being built
    "timeout": 30.0,  # seconds one agent request may take before the agent counts as down
    "history": 20,  # sessions the ESG keeps
    "write_check_bytes": 64 * 2**10,  # 64 KiB: larger values are not checked for writes
    "partition_bytes": 64 * 2**20,  # 64 MiB: target size of one partition
    "partitioner": "metis",  # or "spectral"
    "prefetch": "on",  # PREFETCH what the next tests need (engine.py); "off": load on demand
    # RAM eviction of the plan: by next use, evicting early to prefetch ("aggressive"), by
    # next use only at the test that needs room ("belady"), or by recency ("lru")
    "eviction": "aggressive",
    "lookahead_tests": 16,  # a load is issued at most this many tests ahead of its use
    "lookahead_bytes": 0,  # bytes loaded ahead of their use, per agent (0: its RAM budget)
    # run one CI shard of the suite: "I/N", "auto" (from the CI system's variables) or "off"
    "shard": "auto",
    # under `pytest -n N` with no --dist: schedule by state affinity (--dist statemigrate)
    "affinity": "on",
    # statemigrate_fixtures = auto: the least setup seconds per session worth managing
    "auto_seconds": 0.05,
}

PARTITIONERS: Final = ("metis", "spectral")
AUTO: Final = "auto"  # the fixture pattern that lets earlier runs' measurements choose
SWITCHES: Final = ("on", "off")
EVICTIONS: Final = ("belady", "lru", "aggressive")


_SEPARATORS: Final = re.compile(r"[,\s]+")


class SettingsError(ValueError):
    """A bad option or ini value; the message is one line naming it and the fix."""


def parse_patterns(text: str) -> tuple[str, ...]:
    """``"data*, model"`` (commas, spaces or lines between them) → ``("data*", "model")``:
    fixture names hold none of them, so ``statemigrate_fixtures = corpus vocabulary`` on one
    line is two patterns, not one that matches nothing."""
    return tuple(p for p in _SEPARATORS.split(text) if p)


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """A pattern selects the fixture name ``name``; as with shell globs and dotfiles, a name
    starting with ``_`` only by a pattern that does too (``fixtures.is_selected``)."""
    private = name.startswith("_")
    return any(fnmatch.fnmatchcase(name, p) for p in patterns if not private or p.startswith("_"))


def patterns_note(settings: Settings, names: Iterable[str] | None = None) -> str | None:
    """One line for the summary when ``--sm-fixtures`` selects nothing it was meant to: it is
    empty, or (given ``names``, the fixtures the selected tests use) a pattern of it matches
    none of them. The option replaces the ini list, whose fixtures then run unmanaged: the
    line says so. None when there is nothing to say (no option, or every pattern matched)."""
    given = settings.option_patterns
    if given is None:
        return None
    replaced = ""
    if settings.ini_patterns:
        replaced = (
            f"it replaces statemigrate_fixtures ({', '.join(settings.ini_patterns)}), whose "
            "fixtures run unmanaged"
        )
    if not given:
        return f"--sm-fixtures is empty: {replaced}" if replaced else None
    if names is None:
        return None
    used = set(names)
    unmatched = [p for p in given if p != AUTO and not any(name_matches(n, (p,)) for n in used)]
    option = f"--sm-fixtures={','.join(given)}"
    if not unmatched:
        return None
    if len(unmatched) < len(given):
        return f"{option}: {', '.join(unmatched)} matched no fixture the selected tests use"
    return f"{option} matched no fixture the selected tests use" + (
        f"; {replaced}" if replaced else ""
    )


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``"ipc:///a, tcp://127.0.0.1:5"`` (or one a line) → the endpoints, in order."""
    return tuple(e.strip() for e in text.replace("\n", ",").split(",") if e.strip())


def check_endpoints(text: str, curve: bool = False) -> str | None:
    """Validate agent endpoints (comma-separated or one a line); the normalized
    comma-separated list, or None when there is none.

    :raises ValueError: one line naming the first bad or repeated endpoint.
    """
    from nodeagent.protocol import check_endpoint

    endpoints = parse_endpoints(text)
    for endpoint in endpoints:
        check_endpoint(endpoint, curve=curve)  # BindRefused is a ValueError
        if "*" in endpoint:
            raise ValueError(f"{endpoint}: name the agent's port, not *")
    if len(set(endpoints)) != len(endpoints):
        twice = next(e for e in endpoints if endpoints.count(e) > 1)
        raise ValueError(f"{twice} is listed twice")
    return ",".join(endpoints) or None


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"{text!r} must be positive")
        return value

    return convert


def arg_type(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a converter for argparse, so a bad flag is one line from pytest itself."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one run."""

    patterns: tuple[str, ...]
    #: Long-lived agents' endpoints, comma-separated (what xdist workers are handed), or None
    #: to start one for the run; see :attr:`agents`.
    agent: str | None
    store_dir: Path
    store: str | None
    refresh: bool
    stats_json: Path | None
    max_value_bytes: int
    ram_bytes: int
    disk_bytes: int
    lease_seconds: float
    timeout: float
    history: int = DEFAULTS["history"]
    write_check_bytes: int = DEFAULTS["write_check_bytes"]
    partition_bytes: int = DEFAULTS["partition_bytes"]
    partitioner: str = DEFAULTS["partitioner"]
    record: bool = False  # record the ESG even when nothing is managed
    #: ``auto`` among the fixture patterns: manage what earlier runs measured to be worth it
    auto: bool = False
    auto_seconds: float = DEFAULTS["auto_seconds"]
    prefetch: bool = True
    eviction: str = DEFAULTS["eviction"]
    lookahead_tests: int = DEFAULTS["lookahead_tests"]
    lookahead_bytes: int = DEFAULTS["lookahead_bytes"]
    plan_json: Path | None = None  # --sm-plan: where the run's migration plan is written
    report_html: Path | None = None  # --sm-report: where the run report is written
    shard: ShardSpec | str = DEFAULTS["shard"]  # a spec, "auto" or "off"
    #: --sm-keys / statemigrate_keys, loaded: CURVE keys for talking to ``agent``
    curve: ClientKeys | None = None
    #: ``-n N`` without ``--dist`` means ``--dist statemigrate`` while something is managed
    affinity: bool = True
    #: where ``store_dir`` was set, as the user wrote it (for messages about it)
    store_dir_source: str = ""
    #: ``--sm-fixtures`` as given (None: not given; then ``patterns`` are the ini list's)
    option_patterns: tuple[str, ...] | None = None
    ini_patterns: tuple[str, ...] = ()  # statemigrate_fixtures

    @property
    def agents(self) -> tuple[str, ...]:
        """The long-lived agents' endpoints (several: placed by a hash ring, placement.py)."""
        return parse_endpoints(self.agent or "")

    @property
    def disk_dir(self) -> Path:
        """Where the embedded agent keeps its diskcache tier."""
        return self.store_dir / "agent-disk"


def _convert(name: str, raw: str, convert: Callable[[str], Any]) -> Any:
    try:
        return convert(raw)
    except ValueError as exc:
        raise SettingsError(f"statemigrate: bad value for {name}: {exc}") from None


def build(
    *,
    rootdir: Path,
    ini: Callable[[str], Any],
    option: Callable[[str], Any],
) -> Settings:
    """Build settings from the run's ini keys and options.

    :param ini: ``config.getini``; :param option: ``config.getoption``.
    """
    cli_patterns = option("sm_fixtures")
    ini_patterns = parse_patterns("\n".join(ini("statemigrate_fixtures")))
    patterns: Sequence[str] = cli_patterns if cli_patterns is not None else ini_patterns
    auto = AUTO in patterns
    agent, curve = _agents_and_keys(
        option("sm_agent") or ini("statemigrate_agent") or "",
        rootdir,
        option("sm_keys"),
        (ini("statemigrate_keys") or "").strip(),
    )

    def ini_or_default(key: str, convert: Callable[[str], Any]) -> Any:
        raw = (ini(f"statemigrate_{key}") or "").strip()
        return _convert(f"statemigrate_{key}", raw, convert) if raw else DEFAULTS[key]

    store_dir = Path(option("sm_dir") or ini_or_default("dir", str))
    if not store_dir.is_absolute():
        store_dir = rootdir / store_dir
    if option("sm_dir"):
        store_dir_source = f"--sm-dir={option('sm_dir')}"
    elif (ini("statemigrate_dir") or "").strip():
        store_dir_source = f"statemigrate_dir = {ini('statemigrate_dir').strip()}"
    else:
        store_dir_source = f"the store directory {store_dir} (--sm-dir, statemigrate_dir)"
    store = (ini("statemigrate_store") or "").strip() or None
    if store is not None:
        from nodeagent.storeurl import check_location

        # Cheap: the protocol is known and its backend package is found, without importing
        # it; the agent's start opens the store for real.
        _convert("statemigrate_store", store, check_location)
    stats_json = option("sm_stats_json")
    partitioner = option("sm_partitioner") or ini_or_default("partitioner", _choice(PARTITIONERS))
    return Settings(
        patterns=tuple(p for p in patterns if p and p != AUTO),
        agent=agent,
        store_dir=store_dir,
        store=store,
        refresh=bool(option("sm_refresh")),
        stats_json=Path(stats_json) if stats_json else None,
        max_value_bytes=ini_or_default("max_value_bytes", parse_size),
        ram_bytes=ini_or_default("ram_bytes", parse_size),
        disk_bytes=ini_or_default("disk_bytes", parse_size),
        lease_seconds=ini_or_default("lease_seconds", _positive(float)),
        timeout=ini_or_default("timeout", _positive(float)),
        history=ini_or_default("history", _positive(int)),
        write_check_bytes=ini_or_default("write_check_bytes", parse_size),
        partition_bytes=ini_or_default("partition_bytes", _positive(parse_size)),
        partitioner=partitioner,
        record=bool(option("sm_record")) or auto,
        auto=auto,
        auto_seconds=ini_or_default("auto_seconds", _positive(float)),
        prefetch=(option("sm_prefetch") or ini_or_default("prefetch", _choice(SWITCHES))) == "on",
        eviction=ini_or_default("eviction", _choice(EVICTIONS)),
        lookahead_tests=ini_or_default("lookahead_tests", _positive(int)),
        lookahead_bytes=ini_or_default("lookahead_bytes", parse_size),
        plan_json=Path(option("sm_plan")) if option("sm_plan") else None,
        report_html=Path(option("sm_report")) if option("sm_report") else None,
        shard=option("sm_shard") or ini_or_default("shard", parse_shard),
        curve=curve,
        affinity=ini_or_default("affinity", _choice(SWITCHES)) == "on",
        store_dir_source=store_dir_source,
        option_patterns=None if cli_patterns is None else tuple(cli_patterns),
        ini_patterns=ini_patterns,
    )


def store_dir_trouble(settings: Settings) -> str | None:
    """Make the store directory (it holds the secret, the disk tier and the ESG; 0700 when
    made now) and load the signing secret; when either fails (a secret too short, or others
    may read it), one line naming where it was set and the fix, for the summary: the run
    is then unmanaged, as plain pytest would run it (rejected: a usage error, which would
    stop a suite over a cache). None when both are usable."""
    source = settings.store_dir_source or str(settings.store_dir)
    try:
        settings.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return (
            f"{source}: cannot create it ({exc.strerror or exc}); name a directory that can "
            "be made: fixtures run unmanaged"
        )
    # It exists but may be read-only (a read-only mount, a checkout owned by another user):
    # the run writes its disk tier, ESG and agent log there.
    if not os.access(settings.store_dir, os.W_OK | os.X_OK):
        return (
            f"{source}: cannot write in it (read-only); name a writable directory: "
            "fixtures run unmanaged"
        )
    from .codec import SecretError, load_secret

    try:  # a secret others may know lets them choose what this run unpickles
        load_secret(settings.store_dir)
    except (SecretError, OSError) as exc:
        return f"{exc}: fixtures run unmanaged"
    return None


def _agents_and_keys(
    text: str, rootdir: Path, cli: str | None, ini: str
) -> tuple[str | None, ClientKeys | None]:
    """Check the agent endpoints; load the CURVE client keys when agents are used with them.

    Keys are only read for long-lived agents (the embedded one listens on ipc:// without
    CURVE), so an ini file may name a key directory that exists only where such agents run.
    :returns: the endpoints (comma-separated) or None, and the keys or None.
    """
    if not parse_endpoints(text):
        return None, None
    from nodeagent.protocol import BindRefused

    name = "--sm-keys" if cli else "statemigrate_keys"
    raw = cli or ini
    curve = None
    if raw:
        from nodeagent.curve import ClientKeys, KeysError

        directory = Path(raw)
        if not directory.is_absolute():
            directory = rootdir / directory
        try:
            curve = ClientKeys.load(directory)
        except KeysError as exc:
            raise SettingsError(f"statemigrate: bad value for {name}: {exc}") from None
    try:
        agent = check_endpoints(text, curve=curve is not None)
    except BindRefused as exc:
        fix = ""
        if exc.needs_keys:
            fix = (
                ": pass --sm-keys DIR (or the ini key statemigrate_keys) with the client keys "
                "made by `statemigrate keys`"
            )
        raise SettingsError(f"statemigrate: bad agent endpoint: {exc}{fix}") from None
    except ValueError as exc:
        raise SettingsError(f"statemigrate: bad agent endpoint: {exc}") from None
    return agent, curve


def parse_shard(text: str) -> ShardSpec | str:
    """:func:`shard.parse_spec`, imported only when a shard is asked for (a suite that
    manages nothing does not import the shard planner)."""
    from .shard import parse_spec

    return parse_spec(text)


def _choice(allowed: Sequence[str]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return convert
