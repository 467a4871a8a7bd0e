"""The ``statemigrate`` command: run an agent, make its keys, clear the store, see and manage
the ESG."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from nodeagent.units import parse_size

from .settings import DEFAULTS, PARTITIONERS

#: Where `statemigrate keys` writes, relative to the working directory (run it in the rootdir).
KEYS_DIR: Final = f"{DEFAULTS['dir']}/keys"


def _keys(args: argparse.Namespace) -> int:
    from nodeagent.curve import KeysError, create_keys

    directory = Path(args.directory)
    try:
        create_keys(directory, force=args.force)
    except KeysError as exc:
        print(f"statemigrate keys: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote CURVE keys to {directory}\n"
        f"  agent:   python -m nodeagent --curve-dir {directory} ...  "
        "(needs server.key_secret, authorized/*.key)\n"
        f"  clients: pytest --sm-keys {directory} ...  (need client.key_secret, server.key)\n"
        "Copy each side only its own files; see docs/security.md."
    )
    return 0


def _clear(args: argparse.Namespace) -> int:
    if args.agent:
        from nodeagent.client import AgentClient, AgentError
        from nodeagent.curve import ClientKeys, KeysError

        try:
            curve = None if args.keys is None else ClientKeys.load(args.keys)
        except KeysError as exc:
            print(f"statemigrate clear: --keys: {exc}", file=sys.stderr)
            return 1
        try:
            with AgentClient(args.agent, timeout=10.0, curve=curve) as client:
                removed = client.clear()
        except AgentError as exc:
            print(f"statemigrate clear: {exc}", file=sys.stderr)
            return 1
        print(f"cleared {removed} entries from the agent at {args.agent}")
        return 0
    store_dir = Path(args.dir)
    removed = 0
    for sub in ("agent-disk", *(["store"] if args.store is None else [])):
        path = store_dir / sub
        if path.exists():
            shutil.rmtree(path)
            removed += 1
    if args.store:
        from nodeagent.storeurl import StoreError, is_url

        if is_url(args.store):  # a shared bucket: remove the entries, not the prefix
            from nodeagent.tiers import StoreTier

            try:
                count = StoreTier(args.store).clear()
            except StoreError as exc:
                print(f"statemigrate clear: {exc}", file=sys.stderr)
                return 2
            print(f"removed {count} entries from {args.store}")
        else:
            path = Path(args.store)
            if path.exists():
                shutil.rmtree(path)
                removed += 1
    print(f"cleared the store in {store_dir}" + (f" and {args.store}" if args.store else ""))
    return 0


# -- the execution state graph ------------------------------------------------------------


class _NoESG(Exception):
    pass


def _open_esg(args: argparse.Namespace) -> Any:
    from .esg import ESGStore

    path = Path(args.dir) / "esg.sqlite"
    if not path.exists():
        raise _NoESG(
            f"no execution state graph at {path}: run pytest with managed fixtures "
            "(or with --sm-record) first, or pass --dir"
        )
    store = ESGStore(path)
    if store.notice:
        print(f"statemigrate: {store.notice}", file=sys.stderr)
    return store


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table; columns whose cells are all numbers are right-aligned."""
    cells = [[str(c) for c in head], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(head))
    ]
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def _when(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def _esg(args: argparse.Namespace) -> int:
    from .export import human_bytes

    with _open_esg(args) as store:
        sessions = store.sessions()
        elements = store.elements()
        stale = _stale(store)
    print(
        f"{len(sessions)} session(s) kept, {len(elements)} element(s)"
        + (f", {len(stale)} stale" if stale else "")
        + "\n"
    )
    print(
        _table(
            ["session", "started", "host", "tests", "elements"],
            [(s.id[:12], _when(s.started), s.host, s.tests, s.elements) for s in sessions],
        )
    )
    print()
    rows = sorted(elements, key=lambda e: (-e.accesses, e.fixture))
    print(
        _table(
            [
                "fixture",
                "key",
                "size",
                "build s",
                "load s",
                "accesses",
                "writes",
                "tests",
                "status",
            ],
            [
                (
                    e.fixture,
                    e.key.rsplit("-", 1)[-1][:12],  # keys read "<fixture>-<digest>"
                    human_bytes(e.nbytes),
                    _seconds(e.build_s),
                    _seconds(e.load_s),
                    e.accesses,
                    e.writes,
                    e.tests,
                    "stale" if e.key in stale else "current",
                )
                for e in rows
            ],
        )
    )
    if stale:
        print(
            "\nstale: a later run built or loaded another key for the same fixture and param "
            "(its code, a dependency or an input changed): no run uses these again"
        )
    return 0


def _stale(store: Any) -> set[str]:
    """Keys of elements that the current code no longer makes: the last run that set up
    their fixture (and param) used another key for it."""
    latest = store.prediction().latest
    return {e.key for e in store.elements() if latest.get(e.fixture, e.key) != e.key}


def _partitions(args: argparse.Namespace) -> int:
    from .export import human_bytes

    with _open_esg(args) as store:
        parts = store.partitions()
        labels = {e.key: e.fixture for e in store.elements()}
    if not parts:
        print("no partitions yet: they are computed at the end of a run that recorded state")
        return 0
    print(f"{len(parts)} partition(s), generation {parts[0].generation}\n")
    rows = []
    for p in parts:
        names = sorted({labels.get(k, k[:12]) for k in p.elements})
        shown = ", ".join(names[:3]) + (f", +{len(names) - 3}" if len(names) > 3 else "")
        profile = " ".join(str(n) for n in p.accesses[-8:])
        rows.append(
            (
                p.id,
                len(p.elements),
                human_bytes(p.nbytes),
                len(p.tests),
                profile,
                _when(p.last_used),
                shown,
            )
        )
    print(
        _table(
            ["id", "elements", "size", "tests", "accesses/session", "last used", "fixtures"],
            rows,
        )
    )
    return 0


def _suggest(args: argparse.Namespace) -> int:
    from .auto import decide

    with _open_esg(args) as store:
        found = store.suggestions()
        decisions = decide(found, store.managed_costs(), store.refusals(), args.auto_seconds)
    auto = "\n".join(decisions.lines(args.auto_seconds))
    if auto:
        auto = f"\nwith statemigrate_fixtures = auto, the next run:\n{auto}"
    found = [s for s in found if s.mean_s >= args.min_seconds]
    if not found:
        print(
            f"no unmanaged fixture takes {args.min_seconds:g} s or more to set up "
            "(in the recorded sessions)" + auto
        )
        return 0
    found.sort(key=lambda s: -s.saving_s)
    picklable = {True: "yes", False: "no", None: "?"}
    print(
        _table(
            ["fixture", "scope", "setup s", "setups", "tests", "pickles", "saving s/session"],
            [
                (
                    s.fixture,
                    s.scope,
                    _seconds(s.mean_s),
                    s.setups,
                    s.tests,
                    picklable[s.picklable],
                    _seconds(s.saving_s),
                )
                for s in found
            ],
        )
    )
    names = list(dict.fromkeys(s.fixture.rsplit("::", 1)[-1] for s in found if s.picklable))
    if names:
        lines = "".join(f"\n    {name}" for name in names)
        print(
            "\nto manage those whose value pickles, add to the ini file's [pytest] section (in "
            "pyproject.toml's [tool.pytest.ini_options], as a list), or decorate them with "
            f"@pytest_statemigrate.state:\nstatemigrate_fixtures ={lines}"
        )
    else:
        print("\nnone of them pickles: none can be managed")
    if auto:
        print(auto)
    return 0


def _graph(args: argparse.Namespace) -> int:
    from .export import export

    with _open_esg(args) as store:
        graph = store.to_networkx()
        for part in store.partitions():
            for key in part.elements:
                if key in graph:
                    graph.nodes[key]["partition"] = part.id
        for key in _stale(store):
            graph.nodes[key]["stale"] = True
    export(graph, args.format, Path(args.output))
    print(f"wrote {args.output} ({graph.number_of_nodes()} elements, {args.format})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .runreport import read

    store_dir = Path(args.dir)
    if not store_dir.is_dir():
        print(
            f"statemigrate report: no store directory {store_dir}: run pytest with the plugin "
            "first, or pass --dir",
            file=sys.stderr,
        )
        return 1
    stats = Path(args.stats) if args.stats else None
    plan = Path(args.plan) if args.plan else None
    page = read(store_dir, stats, plan)
    try:
        Path(args.output).write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"statemigrate report: cannot write {args.output} ({exc})", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .esg import ESGError, ESGStore

    path = Path(args.dir) / "esg.sqlite"
    with ESGStore(path) as store:
        for name in args.files:
            try:
                added = store.merge_from(Path(name))
            except ESGError as exc:
                print(f"statemigrate merge: {exc}", file=sys.stderr)
                return 1
            print(f"{name}: {added} session(s) merged into {path}")
    return 0


class _Collected:
    """A pytest plugin that keeps the node ids of the collected tests (after deselection and
    sharding), and the line the shard printed, if the run shards."""

    def __init__(self) -> None:
        self.nodeids: list[str] = []
        self.line = ""

    def pytest_collection_finish(self, session: Any) -> None:
        self.nodeids = [item.nodeid for item in session.items]
        sharding = session.config.pluginmanager.get_plugin("statemigrate-shard")
        self.line = getattr(sharding, "line", "")


def collect_main(argv: Sequence[str]) -> int:
    """``python -c ... OUT PYTEST_ARGS``: collect as a shard would and write the selected node
    ids and the shard's line to OUT as JSON (``statemigrate shard --check``, one fresh process
    per shard: a test id made at import time differs between them as between CI machines)."""
    import json

    import pytest

    out, *pytest_args = argv
    collected = _Collected()
    # --assert=plain: collecting only (rewriting would also warn about modules imported already)
    code = pytest.main(["--co", "-q", "--assert=plain", *pytest_args], [collected])
    Path(out).write_text(json.dumps({"tests": collected.nodeids, "line": collected.line}))
    return int(code)


_COLLECT: Final = (
    "import sys; from pytest_statemigrate.cli import collect_main; "
    "sys.exit(collect_main(sys.argv[1:]))"
)


def _collect_apart(pytest_args: Sequence[str], what: str) -> tuple[list[str], str] | None:
    """The selection and shard line of a collection in a fresh process; None (its output
    shown, and one line saying which collection failed) when it failed."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="statemigrate-check-") as tmp:
        out = Path(tmp) / "collected.json"
        run = subprocess.run(
            [sys.executable, "-c", _COLLECT, str(out), *pytest_args],
            capture_output=True,
            text=True,
        )
        ok = run.returncode in (0, 5) and out.exists()  # 5: no tests (more shards than tests)
        if ok:
            data = json.loads(out.read_text())
            return list(data["tests"]), str(data["line"])
    print(run.stdout + run.stderr, end="")
    print(
        f"statemigrate shard --check: collecting {what} failed (exit status {run.returncode})",
        file=sys.stderr,
    )
    return None


def _check(args: argparse.Namespace) -> int:
    """Collect the tests once whole and once per shard, each in its own process, and check
    that every test is in exactly one shard."""
    import os
    import re

    base = [f"--sm-dir={os.path.abspath(args.dir)}", *args.pytest_args]
    full = _collect_apart(["--sm-shard=off", *base], "the tests without sharding")
    if full is None:
        return 1
    shards: list[list[str]] = []
    for i in range(1, args.total + 1):
        got = _collect_apart([f"--sm-shard={i}/{args.total}", *base], f"shard {i}/{args.total}")
        if got is None:
            return 1
        tests, line = got
        shards.append(tests)
        digest = re.search(r" plan ([0-9a-f]{12})", line)
        plan = f"plan {digest.group(1)}" if digest else "no plan line"
        print(f"shard {i}/{args.total}: {len(tests)} of {len(full[0])} tests ({plan})")
    from .shard import tally

    result = tally(full[0], shards)
    if result.ok:
        print(
            f"the {args.total} shards add up: each of the {len(full[0])} tests is in exactly "
            "one shard"
        )
        return 0
    for test in result.missing:
        print(f"missing: {test}")
    for test, where in result.duplicated:
        print(f"duplicated (shards {', '.join(map(str, where))}): {test}")
    for test in result.unknown:
        print(f"not in the full collection: {test}")
    print(
        f"statemigrate shard --check: the {args.total} shards do not add up: "
        f"{len(result.missing)} tests in no shard, {len(result.duplicated)} in two or more, "
        f"{len(result.unknown)} not in the full collection (test ids that differ between "
        "processes? see docs/sharding.md)",
        file=sys.stderr,
    )
    return 1


def _shard(args: argparse.Namespace) -> int:
    import contextlib
    import io

    import pytest

    from .shard import esg_workload, split

    if args.total < 1:
        print("statemigrate shard: N must be >= 1", file=sys.stderr)
        return 2
    if args.check:
        return _check(args)
    collected = _Collected()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # --assert=plain: collecting only, and this process has imported the plugin already
        # (rewriting it would warn, an error under filterwarnings = error)
        argv = ["--co", "-q", "--assert=plain", "--sm-shard=off", *args.pytest_args]
        code = pytest.main(argv, [collected])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        print(out.getvalue(), end="")
        print(f"statemigrate shard: collecting the tests failed ({code!r})", file=sys.stderr)
        return 1
    work = esg_workload(Path(args.dir) / "esg.sqlite", DEFAULTS["history"])
    plan = split(collected.nodeids, work, args.total)
    known = sum(1 for t in collected.nodeids if t in work.needs)
    print(
        f"{len(collected.nodeids)} tests, {known} known to the ESG in {args.dir}; "
        f"plan {plan.digest()}"
    )
    for i, part in enumerate(plan.parts):
        print(
            f"shard {i + 1}/{args.total}: {len(part.tests)} tests, ~{part.seconds:.2f}s "
            f"(tests {part.test_s:.2f}s, state {part.state_s:.2f}s in "
            f"{len(part.elements)} elements)"
        )
        if args.tests:
            for test in part.tests:
                print(f"    {test}")
    distinct = sum(work.element_cost(k) for k in {k for p in plan.parts for k in p.elements})
    print(
        f"longest ~{plan.longest:.2f}s, mean ~{plan.mean:.2f}s ({plan.imbalance:.2f}x); state "
        f"paid over all shards ~{plan.state_s:.2f}s, ~{distinct:.2f}s of it distinct"
    )
    return 0


def _partition(args: argparse.Namespace) -> int:
    from .partition import Unavailable, repartition

    with _open_esg(args) as store:
        try:
            parts = repartition(
                store,
                partition_bytes=args.partition_bytes,
                agents=args.agents,
                method=args.partitioner,
            )
        except Unavailable as exc:
            print(f"statemigrate partition: {exc}", file=sys.stderr)
            return 2
    print(f"{len(parts)} partition(s) saved; see them with `statemigrate partitions`")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from .engine import format_plan

    path = Path(args.path) if args.path else Path(args.dir) / "plan.json"
    try:
        data = json.loads(path.read_text())
        lines = format_plan(data, actions=not args.summary)
    except FileNotFoundError:
        print(
            f"statemigrate plan: no plan at {path}: a run makes one once the ESG has "
            "partitions (or write one with --sm-plan PATH)",
            file=sys.stderr,
        )
        return 1
    except (ValueError, KeyError, TypeError) as exc:
        print(f"statemigrate plan: {path} is not a plan ({exc})", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _size_arg(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def example_suite() -> Path:
    """The bundled example suite: in the wheel as ``pytest_statemigrate._example``, in a
    source checkout at ``examples/suite``."""
    import importlib.util

    spec = importlib.util.find_spec("pytest_statemigrate._example")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "conftest.py").is_file():
            return Path(location)
    return Path(__file__).resolve().parent.parent / "examples" / "suite"


def _demo(args: argparse.Namespace) -> int:
    """Copy the bundled example into a directory and run it twice with the plugin: cold
    (values built and stored), then warm (served)."""
    import subprocess
    import tempfile

    source = example_suite()
    if not (source / "conftest.py").is_file():
        print(f"statemigrate demo: the bundled example is not at {source}", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        if args.directory is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sm-demo-")))
        else:
            base = Path(args.directory)
        dest = base / "suite"
        if dest.exists():
            print(f"statemigrate demo: {dest} exists: name a new directory", file=sys.stderr)
            return 2
        ignore = shutil.ignore_patterns("__pycache__", ".statemigrate", ".pytest_cache")
        shutil.copytree(source, dest, ignore=ignore)
        for run in ("cold: every value is built and stored", "warm: the stored values are served"):
            print(f"\n== statemigrate demo, {run} ({dest})", flush=True)
            command = [sys.executable, "-m", "pytest", "-p", "statemigrate", "-q", str(dest)]
            done = subprocess.run(command, cwd=dest, check=False)
            if done.returncode != 0:
                return done.returncode
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:
        from nodeagent.__main__ import main as agent_main

        return agent_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="statemigrate", description="pytest-statemigrate: managed fixture state"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("agent", help="run a node agent (same options as python -m nodeagent)")
    demo = sub.add_parser(
        "demo",
        help="run the bundled example suite cold, then warm",
        description="Copy the bundled example suite into DIR (default: a temporary directory, "
        "removed afterwards) and run it twice with the plugin: the first run builds and stores "
        "its values, the second serves them.",
    )
    demo.add_argument("directory", nargs="?", default=None, metavar="DIR")
    clear = sub.add_parser("clear", help="empty the store (and optionally a running agent)")
    clear.add_argument(
        "--dir", default=DEFAULTS["dir"], help="store directory (default %(default)s)"
    )
    clear.add_argument(
        "--store",
        default=None,
        help="also empty this tier-3 store (a directory or an fsspec URL)",
    )
    clear.add_argument("--agent", default=None, help="clear the agent at this endpoint instead")
    clear.add_argument(
        "--keys", default=None, metavar="DIR", help="client CURVE keys for --agent (see keys)"
    )
    keys = sub.add_parser(
        "keys",
        help="create CURVE keys for an agent and its clients",
        description="Create a CURVE key pair for the agent and one for its clients in DIR "
        "(secret files 0600), for agents on a non-loopback endpoint.",
    )
    keys.add_argument(
        "directory",
        nargs="?",
        default=KEYS_DIR,
        metavar="DIR",
        help="where to write them (default %(default)s)",
    )
    keys.add_argument("--force", action="store_true", help="replace keys that exist in DIR")

    def esg_command(name: str, text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "--dir", default=DEFAULTS["dir"], help="store directory (default %(default)s)"
        )
        return cmd

    esg_command("esg", "the recorded sessions and state elements")
    esg_command("partitions", "the state partitions and their access profiles")
    suggest = esg_command("suggest", "unmanaged fixtures worth managing")
    suggest.add_argument(
        "--min-seconds",
        type=float,
        default=0.01,
        help="setup time below which a fixture is not listed (default %(default)s)",
    )
    suggest.add_argument(
        "--auto-seconds",
        type=float,
        default=DEFAULTS["auto_seconds"],
        help="statemigrate_auto_seconds, for what auto would decide (default %(default)s)",
    )
    graph = esg_command("graph", "write the ESG as a picture (html) or data")
    graph.add_argument("--format", choices=("html", "graphml", "json", "dot"), default="html")
    graph.add_argument("-o", "--output", required=True, help="file to write")
    report = esg_command(
        "report",
        "write the last run's report as an HTML page: per fixture, the prefetch plan, the trend",
    )
    report.add_argument("-o", "--output", required=True, help="file to write")
    report.add_argument(
        "--stats", default=None, metavar="PATH", help="run stats (default: stats.json in --dir)"
    )
    report.add_argument(
        "--plan", default=None, metavar="PATH", help="a plan file (default: plan.json in --dir)"
    )
    merge = esg_command("merge", "merge ESG files (of CI shards) into this store's")
    merge.add_argument("files", nargs="+", metavar="FILE", help="esg.sqlite files")
    part = esg_command("partition", "re-partition the ESG now")
    part.add_argument("--partitioner", choices=PARTITIONERS, default=DEFAULTS["partitioner"])
    part.add_argument(
        "--partition-bytes",
        type=_size_arg,
        default=DEFAULTS["partition_bytes"],
        help="target partition size, e.g. 64M (default 64M)",
    )
    part.add_argument("--agents", type=int, default=1, help="node agents (default 1)")
    plan = esg_command("plan", "the last run's migration plan: what was prefetched, when")
    plan.add_argument(
        "path", nargs="?", default=None, help="a plan file (default: plan.json in --dir)"
    )
    plan.add_argument("--summary", action="store_true", help="one line per agent only")
    shard = esg_command(
        "shard",
        "the CI shard plan: which tests each of N shards runs (pytest arguments that select "
        "the tests, as the shards get them, go after --)",
    )
    shard.add_argument("total", type=int, metavar="N", help="number of shards")
    shard.add_argument("--tests", action="store_true", help="list each shard's tests")
    shard.add_argument(
        "--check",
        action="store_true",
        help="collect the tests whole and as each of the N shards would, each in a fresh "
        "process, and check that every test is in exactly one shard (exit status 1 and the "
        "tests that are not, otherwise)",
    )
    pytest_args: list[str] = []
    if argv[:1] == ["shard"] and "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.pytest_args = pytest_args
    commands = {
        "plan": _plan,
        "clear": _clear,
        "demo": _demo,
        "keys": _keys,
        "esg": _esg,
        "partitions": _partitions,
        "suggest": _suggest,
        "graph": _graph,
        "report": _report,
        "merge": _merge,
        "partition": _partition,
        "shard": _shard,
    }
    try:
        return commands[args.command](args)
    except _NoESG as exc:
        print(f"statemigrate {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `statemigrate esg | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
