"""Hooks and options. No logic: everything is delegated to the session object (session.py)."""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from . import _spec
from . import settings as st

if TYPE_CHECKING:
    from .engine import AgentInfo

SESSION = "statemigrate-session"
FIXTURE_HOOKS = "statemigrate-fixtures"
WORKER_KEY = "statemigrate_agent"
CLOSURES_KEY = "statemigrate_closures"  # where workers leave closures for --dist statemigrate
SHARD = "statemigrate-shard"  # the _Sharding object of a run that shards
SHARD_LINE_KEY = "statemigrate_shard_line"  # where an xdist worker leaves its shard's line
COMMAND_LINE = "statemigrate-command-line"  # the parser, to read the command line alone


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.register(_DistChoice(parser), "statemigrate-dist-choice")
    pluginmanager.register(_CommandLine(parser), COMMAND_LINE)
    from . import options  # (the table of every option and ini key, with their texts)

    options.register(parser)


DIST: Final = "statemigrate"  # --dist statemigrate: pytest-xdist by state affinity


class _DistChoice:
    """Adds ``statemigrate`` to pytest-xdist's ``--dist`` choices once xdist's options exist
    (it may register before or after this plugin). xdist asks ``pytest_xdist_make_scheduler``
    for any mode it does not know; its option only lists its own."""

    def __init__(self, parser: pytest.Parser) -> None:
        self.parser = parser
        self.done = False

    def pytest_plugin_registered(self, manager: pytest.PytestPluginManager) -> None:
        if self.done or not manager.has_plugin("xdist"):
            return
        self.done = True
        for option in self.parser.getgroup("xdist").options:
            choices = option.attrs().get("choices")
            if "--dist" in option.names() and isinstance(choices, list) and DIST not in choices:
                choices.append(DIST)  # the list argparse checks against, too


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(trylast=True)
def pytest_statemigrate_select_node(
    partition_bytes: int,
    agents: Sequence[AgentInfo],
    client_host: str,
    held: Mapping[str, str],
) -> str:
    """The default choice of the agent for a partition: the best score (engine.py)."""
    from .engine import best_agent

    return best_agent(agents, partition_bytes, client_host, held).name


def pytest_configure(config: pytest.Config) -> None:
    try:
        settings = st.build(rootdir=config.rootpath, ini=config.getini, option=config.getoption)
    except st.SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None
    workerinput = getattr(config, "workerinput", None)
    endpoint = workerinput.get(WORKER_KEY) if workerinput else settings.agent
    hooks = _Hooks(config, settings, endpoint)
    config.pluginmanager.register(hooks, SESSION)
    if workerinput is None and _affinity_by_default(config, settings, hooks):
        config.option.dist = DIST
        hooks.header = (
            f"statemigrate: -n without --dist: tests scheduled by state affinity (--dist {DIST}; "
            "--dist load or statemigrate_affinity = off for xdist's default)"
        )
    controller = workerinput is None and _distributing(config)
    if config.pluginmanager.hasplugin("xdist") and workerinput is None:
        config.pluginmanager.register(_XdistController(hooks), "statemigrate-xdist")
    shard, notice = _shard_spec(config, settings, hooks.active or settings.record)
    if shard is not None:
        config.pluginmanager.register(_Sharding(config, settings, shard), SHARD)
    elif notice:
        config.pluginmanager.register(_ShardNotice(notice), "statemigrate-shard-notice")
    if controller:
        # xdist's controller runs no test: it only starts the agent its workers share.
        if hooks.active:
            hooks.session.prelaunch(local=False)
    elif hooks.active:
        hooks.activate()
        hooks.session.prelaunch()  # the agent boots while pytest collects
    elif settings.record:
        hooks.activate()
    else:
        # Nothing selected yet: no per-fixture hook at all, unless @state is applied while
        # pytest collects (in a test module); then the hooks are registered at that moment.
        _spec.on_first_use = hooks.activate


def _shard_spec(config: pytest.Config, settings: st.Settings, in_use: bool) -> tuple[Any, str]:
    """The shard this run is (``--sm-shard``, or a CI system's variables when the plugin is in
    use: an installed plugin that manages nothing never splits a suite), and the header line
    that says why ``auto`` does not run the shard the variables name (another splitter).

    :raises pytest.UsageError: bad variables, or ``--sm-shard=I/N`` beside a splitter plugin.
    """
    if settings.shard == "off" or (settings.shard == "auto" and not in_use):
        return None, ""
    from . import shard as sh

    options = vars(config.option)
    if isinstance(settings.shard, sh.ShardSpec):
        error = sh.clash(settings.shard, options)
        if error is not None:
            raise pytest.UsageError(error)
        return settings.shard, ""
    try:
        spec = sh.detect(os.environ)
    except ValueError as exc:
        raise pytest.UsageError(f"statemigrate: {exc}") from None
    if spec is None:
        return None, ""
    command_line, paths = _command_line(config)
    here = config.invocation_params.dir

    def is_file(path: str) -> bool:
        return (here / path.split("::", 1)[0]).is_file()

    why = sh.not_sharding(spec, options, command_line, paths, os.environ, is_file)
    return (None, why) if why is not None else (spec, "")


class _CommandLine:
    """Keeps the parser, to read what the command line (and ``PYTEST_ADDOPTS``) alone say:
    ``config.option`` also holds the ini file's ``addopts``, the same on every shard."""

    def __init__(self, parser: pytest.Parser) -> None:
        self.parser = parser


def _command_line(config: pytest.Config) -> tuple[dict[str, Any], list[str]]:
    """The options and the test paths of this run's command line and ``PYTEST_ADDOPTS``
    (which an xdist worker gets as its controller had them)."""
    holder = config.pluginmanager.get_plugin(COMMAND_LINE)
    if holder is None:  # cannot tell the ini file's addopts apart: count them too
        return vars(config.option), [str(a) for a in config.args]
    args = [
        *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
        *map(str, config.invocation_params.args),
    ]
    namespace = holder.parser.parse_known_args(args)
    return vars(namespace), [str(p) for p in getattr(namespace, "file_or_dir", None) or ()]


class _ShardNotice:
    """``auto`` found a shard in the CI variables and does not run it: the header says why."""

    def __init__(self, line: str) -> None:
        self.line = line

    def pytest_report_header(self) -> list[str]:
        return [self.line]


def _affinity_by_default(config: pytest.Config, settings: st.Settings, hooks: _Hooks) -> bool:
    """``pytest -n N`` with no ``--dist``, which xdist has just made ``--dist load``: while
    something is managed (:attr:`_Hooks.expected`, asked last: a run without ``-n`` reads no
    ESG), tests that share state go to the same worker instead. A mode the user names is
    kept."""
    if not settings.affinity or getattr(config.option, "dist", "no") != "load":
        return False
    if not _distributing(config):  # --collect-only
        return False
    asked = config.known_args_namespace  # the command line and addopts, before xdist's defaults
    if getattr(asked, "dist", "no") != "no" or getattr(asked, "distload", False):
        return False
    return hooks.expected


def _distributing(config: pytest.Config) -> bool:
    """pytest-xdist hands this run's tests to workers (xdist's own criterion)."""
    option = config.option
    return (
        getattr(option, "dist", "no") != "no"
        and bool(getattr(option, "tx", None))
        and not option.collectonly
    )


class _Sharding:
    """``--sm-shard``: keep this shard's tests of the plan every shard computes alike, and say
    how many of how many tests it runs (under pytest-xdist: the first worker's line, which each
    worker leaves in a file before it reports its collection)."""

    def __init__(self, config: pytest.Config, settings: st.Settings, spec: Any) -> None:
        self.config = config
        self.settings = settings
        self.spec = spec
        self.line = ""
        self.notes: list[Path] = []  # the controller's: where the workers leave their line
        if spec.status_file:  # Bazel: this runner shards
            Path(spec.status_file).touch()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from .shard import select

        keep, self.line = select(
            [item.nodeid for item in items],
            self.spec,
            self.settings.store_dir / "esg.sqlite",
            self.settings.history,
        )
        dropped = [item for item in items if item.nodeid not in keep]
        if dropped:
            self.config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item.nodeid in keep]
        note = (getattr(self.config, "workerinput", None) or {}).get(SHARD_LINE_KEY)
        if note:  # the controller shows it (an unwritable store only loses the line)
            with contextlib.suppress(OSError):
                Path(note).parent.mkdir(parents=True, exist_ok=True)
                Path(note).write_text(self.line)

    def pytest_report_collectionfinish(self) -> str:
        return self.line

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        note = self.settings.store_dir / f"shard-{os.getpid()}-{node.gateway.id}.txt"
        self.notes.append(note)
        node.workerinput[SHARD_LINE_KEY] = str(note)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        note = node.workerinput.get(SHARD_LINE_KEY)
        try:
            line = Path(note).read_text() if note else ""
            if note:
                Path(note).unlink()
        except OSError:  # a worker that could not write it: the line is lost, nothing else
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if line and not self.line and reporter is not None:
            self.line = line
            reporter.ensure_newline()
            reporter.write_line(line)

    def pytest_unconfigure(self) -> None:
        for note in self.notes:  # those of workers that never reported a collection
            with contextlib.suppress(OSError):
                note.unlink(missing_ok=True)


class _FixtureHooks:
    """The per-fixture hooks, registered only once something is selected for management."""

    def __init__(self, hooks: _Hooks) -> None:
        self.hooks = hooks

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        return (yield from self.hooks.session.setups.setup(fixturedef, request))

    @pytest.hookimpl(tryfirst=True, specname="pytest_fixture_setup")
    def pytest_fixture_setup_hit(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Any:
        """Hand pytest a loaded value (the wrapper above put it aside) instead of building."""
        found, value = self.hooks.session.setups.take_pending(fixturedef)
        if not found or value is None:
            return None
        fixturedef.cached_result = (value, fixturedef.cache_key(request), None)  # type: ignore[arg-type]
        return value

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self.hooks.session.before_test(item)
        yield
        self.hooks.session.test_ready(item)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not hasattr(self.hooks.config, "workerinput"):
            self.hooks.session.early_prefetch(_selection(self.hooks.config))

    @pytest.hookimpl(tryfirst=True, specname="pytest_collection_finish")
    def pytest_collection_finish_closures(self, session: pytest.Session) -> None:
        """An xdist worker under ``--dist statemigrate``: leave the tests' closures for the
        scheduler, before xdist reports this worker's collection to the controller."""
        workerinput = getattr(self.hooks.config, "workerinput", None)
        path = (workerinput or {}).get(CLOSURES_KEY)
        if path:
            self.hooks.session.write_closures(session.items, Path(path))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """The run order is final (after reordering and deselection): plan the prefetches."""
        config = self.hooks.config
        self.hooks.session.plan_run(
            session.items,
            select=config.hook.pytest_statemigrate_select_node,
            worker=hasattr(config, "workerinput"),
            selection=_selection(config),
        )

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        self.hooks.session.test_done(item)  # before any fixture is torn down
        yield

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.hooks.session.setups.test_report(report.nodeid, report.when, report.duration)

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any]) -> None:
        self.hooks.session.fixture_gone(fixturedef)


class _Hooks:
    """The run's hooks. The fixture hooks and the session object (session.py, and the modules
    it pulls in) come only once something is selected for management: a suite that manages
    nothing pays for an import, one ``pytest_configure`` and two end-of-run hooks."""

    def __init__(self, config: pytest.Config, settings: st.Settings, endpoint: str | None):
        self.config = config
        self.settings = settings
        self.endpoint = endpoint
        self._session: Any = None
        self.header = ""  # a line for pytest's header, when the plugin chose xdist's mode
        self._recorded: bool | None = None  # the ESG records managed values (see expected)
        #: Why this run is unmanaged though something is selected (its store directory
        #: cannot be made), for the summary; checked when something is first selected.
        self.trouble: str | None = None
        self._checked = False
        #: Lines about the configuration for the summary (``--sm-fixtures`` selecting
        #: nothing); an xdist controller gets them from its workers, which collect.
        self.notes: list[str] = []
        note = st.patterns_note(settings)  # an empty --sm-fixtures needs no collection
        if note is not None:
            self.notes.append(note)
        #: ``auto``: the fixture labels earlier runs measured to be worth managing
        self.auto_labels: frozenset[str] = frozenset()
        if settings.auto:
            self.auto_labels = self._auto()

    def _auto(self) -> frozenset[str]:
        """Decide what ``auto`` manages this run, from the ESG; its lines for the summary."""
        from .auto import no_history_line

        path = self.settings.store_dir / "esg.sqlite"
        if not path.is_file():
            self.notes.append(no_history_line())
            return frozenset()
        from .auto import decide_from

        try:
            decisions = decide_from(path, self.settings.history, self.settings.auto_seconds)
        except Exception as exc:  # (a damaged ESG is moved aside when this run saves it)
            self.notes.append(f"auto: the ESG cannot be read ({exc}); nothing is managed")
            return frozenset()
        self.notes.extend(decisions.lines(self.settings.auto_seconds) or [no_history_line()])
        return frozenset(decisions.manage)

    @property
    def active(self) -> bool:
        """Anything selected (``@state`` may be applied while pytest collects), and a store
        directory to keep it in."""
        selected = bool(self.settings.patterns) or self.settings.auto or _spec.decorated_count > 0
        return selected and self.usable()

    def usable(self) -> bool:
        """The store directory exists or was made now (once per run; see :attr:`trouble`)."""
        if not self._checked:
            self._checked = True
            self.trouble = st.store_dir_trouble(self.settings)
        return self.trouble is None

    @property
    def expected(self) -> bool:
        """Something is or was managed: selected now, or values recorded in an earlier run's
        ESG (``@state`` in a test module is seen only once workers collect it)."""
        if self.active:
            return True
        if self._recorded is None:
            path = self.settings.store_dir / "esg.sqlite"
            self._recorded = False
            if path.is_file():  # else no import of the esg package (~15 ms) for a suite with no ESG
                from .esg import records_state

                self._recorded = records_state(path)
        return self._recorded

    @property
    def session(self) -> Any:
        if self._session is None:
            from .session import StateMigrateSession

            self._session = StateMigrateSession(self.settings, self.config.rootpath, self.endpoint)
            self._session.keys.auto_labels = self.auto_labels
        return self._session

    def activate(self) -> None:
        """Register the per-fixture hooks (once), unless the store directory cannot be made."""
        _spec.on_first_use = None
        if not self.usable():
            return
        manager = self.config.pluginmanager
        if manager.get_plugin(FIXTURE_HOOKS) is None:
            manager.register(_FixtureHooks(self), FIXTURE_HOOKS)

    def pytest_report_header(self) -> list[str]:
        return [self.header] if self.header else []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.settings.option_patterns:  # --sm-fixtures: did each pattern match?
            used = {n for item in session.items for n in getattr(item, "fixturenames", ())}
            note = st.patterns_note(self.settings, used)
            if note is not None and note not in self.notes:
                self.notes.append(note)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["statemigrate_notes"] = list(self.notes)
        if self._session is None:
            return
        if workeroutput is None:
            # First: the disk tier's writer thread is still writing the last values built
            # (finish waits for it), and the ESG's SQLite work overlaps that.
            self._session.save_esg()
        self._session.finish()
        if workeroutput is not None:
            workeroutput["statemigrate"] = self._session.stats.to_json()
            workeroutput["statemigrate_esg"] = self._session.esg.to_json()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from .report import RunStats

        stats = self._session.stats if self._session is not None else RunStats()
        if self.trouble is not None:
            stats.fallback(self.trouble)
        for line in self.notes:
            stats.note(line)
        path = self.settings.stats_json
        if path is not None and getattr(self.config, "workerinput", None) is None:
            try:
                stats.write_json(path)
            except OSError as exc:
                stats.fallback(
                    f"--sm-stats-json={path}: cannot write it ({exc.strerror or exc}); name a "
                    "file in a directory that can be made"
                )
        keep = self._session is not None and not stats.is_empty()
        report = self.settings.report_html
        if (keep or report) and getattr(self.config, "workerinput", None) is None:
            from .runreport import after_run

            for line in after_run(stats, self.settings.store_dir, report, keep=keep):
                stats.fallback(line)
        if stats.is_empty():
            return
        terminalreporter.write_sep("-", "statemigrate")
        for line in stats.lines():
            terminalreporter.write_line(line)

    def pytest_unconfigure(self) -> None:
        _spec.on_first_use = None
        if self._session is not None:
            self._session.close()


class _XdistController:
    """Under pytest-xdist: one agent for all workers, and their stats merged at the end."""

    def __init__(self, hooks: _Hooks) -> None:
        self.hooks = hooks
        #: where workers leave their tests' closures (--dist statemigrate, see _Sharding)
        self.closures = hooks.settings.store_dir / f"closures-{os.getpid()}.json"

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if not self.hooks.expected:  # no agent for a suite that manages nothing
            return
        endpoint = self.hooks.session.shared_endpoint()
        if endpoint is not None:
            node.workerinput[WORKER_KEY] = endpoint
        if self.hooks.config.getvalue("dist") == DIST and self.hooks.active:
            node.workerinput[CLOSURES_KEY] = str(self.closures)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != DIST:
            return None
        from xdist.report import report_collection_diff
        from xdist.workermanage import parse_tx_spec_config

        from .shard import (
            AffinityScheduling,
            Workload,
            esg_workload,
            with_closures,
            worker_queues,
        )

        settings = self.hooks.settings
        session = self.hooks.session
        prepared: dict[str, Any] = {}

        def prepare() -> None:
            """While the workers start and collect (half a second at least): read the ESG,
            ask the agents what they hold, import pymetis. The controller is idle then; the
            plan itself is wanted the moment the last worker has collected."""
            try:
                path = settings.store_dir / "esg.sqlite"
                prepared["work"] = esg_workload(path, settings.history, stored=session.stored)
                with contextlib.suppress(ImportError):
                    import pymetis  # noqa: F401  (the split's, imported off the critical path)
            except Exception as exc:
                prepared["error"] = exc

        preparing = threading.Thread(target=prepare, name="statemigrate-plan", daemon=True)
        preparing.start()

        def plan(collection: list[str], workers: int) -> list[list[int]]:
            preparing.join()
            try:
                if "error" in prepared:
                    raise prepared["error"]
                work = with_closures(prepared["work"], self.closures)
            except Exception as exc:  # scheduling by module instead never costs a test
                self.hooks.session.stats.fallback(f"--dist {DIST}: ESG not read ({exc!r})")
                work = Workload({}, {}, {})
            finally:
                self.closures.unlink(missing_ok=True)
            return worker_queues(collection, work, workers)

        def report_diff(first: list[str], other: list[str]) -> None:
            message = report_collection_diff(first, other, "gw0", "another worker")
            report = pytest.CollectReport("", "failed", message, [])
            config.hook.pytest_collectreport(report=report)

        return AffinityScheduling(len(parse_tx_spec_config(config)), plan, log, report_diff)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        for line in output.get("statemigrate_notes", ()):
            if line not in self.hooks.notes:
                self.hooks.notes.append(line)
        if output.get("statemigrate") is not None:
            self.hooks.session.merge_worker(output["statemigrate"], output.get("statemigrate_esg"))


def _selection(config: pytest.Config) -> list[str]:
    """What chooses this run's tests before collection: its paths, -k and -m."""
    option = config.option
    return [*map(str, config.args), f"-k={option.keyword}", f"-m={option.markexpr}"]
