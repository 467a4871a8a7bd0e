"""Hooks and options. No logic: everything is delegated to the session object (session.py)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from . import settings as st
from .session import is_nothing

SESSION = "statemigrate-session"
WORKER_KEY = "statemigrate_agent"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("statemigrate", "pytest-statemigrate: managed fixture state")
    group.addoption(
        "--sm-fixtures",
        dest="sm_fixtures",
        type=st.arg_type(st.parse_patterns),
        default=None,
        metavar="PATTERNS",
        help="comma-separated fnmatch patterns of fixtures to manage (replaces the ini key "
        "statemigrate_fixtures)",
    )
    group.addoption(
        "--sm-agent",
        dest="sm_agent",
        default=None,
        metavar="ENDPOINT",
        help="use the long-lived node agent at ENDPOINT instead of starting one for the run",
    )
    group.addoption(
        "--sm-refresh",
        dest="sm_refresh",
        action="store_true",
        default=False,
        help="rebuild every managed value this run touches and store the new values",
    )
    group.addoption(
        "--sm-stats-json",
        dest="sm_stats_json",
        default=None,
        metavar="PATH",
        help="write the run's statemigrate statistics as JSON to PATH",
    )
    group.addoption(
        "--sm-dir",
        dest="sm_dir",
        default=None,
        metavar="DIR",
        help="store directory (default: .statemigrate below the rootdir)",
    )
    for name, (text, kind) in st.INI.items():
        parser.addini(name, text, type=kind)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    try:
        settings = st.build(rootdir=config.rootpath, ini=config.getini, option=config.getoption)
    except st.SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None
    from .session import StateMigrateSession

    workerinput = getattr(config, "workerinput", None)
    endpoint = workerinput.get(WORKER_KEY) if workerinput else settings.agent
    session = StateMigrateSession(settings, config.rootpath, endpoint)
    config.pluginmanager.register(_Hooks(session, config), SESSION)
    if config.pluginmanager.hasplugin("xdist") and workerinput is None:
        config.pluginmanager.register(_XdistController(session), "statemigrate-xdist")


class _Hooks:
    def __init__(self, session: Any, config: pytest.Config) -> None:
        self.session = session
        self.config = config

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        return (yield from self.session.setup(fixturedef, request))

    @pytest.hookimpl(tryfirst=True, specname="pytest_fixture_setup")
    def pytest_fixture_setup_hit(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Any:
        """Hand pytest a loaded value (the wrapper above put it aside) instead of building."""
        value = self.session.take_pending(fixturedef)
        if value is None or is_nothing(value):
            return None
        fixturedef.cached_result = (value, fixturedef.cache_key(request), None)  # type: ignore[arg-type]
        return value

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["statemigrate"] = self.session.stats.to_json()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        stats = self.session.stats
        path = self.session.settings.stats_json
        if path is not None and getattr(self.config, "workerinput", None) is None:
            stats.write_json(path)
        if stats.is_empty():
            return
        terminalreporter.write_sep("-", "statemigrate")
        for line in stats.lines():
            terminalreporter.write_line(line)

    def pytest_unconfigure(self) -> None:
        self.session.close()


class _XdistController:
    """Under pytest-xdist: one agent for all workers, and their stats merged at the end."""

    def __init__(self, session: Any) -> None:
        self.session = session

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        endpoint = self.session.shared_endpoint()
        if endpoint is not None:
            node.workerinput[WORKER_KEY] = endpoint

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("statemigrate")
        if data is not None:
            self.session.merge_worker(data)
