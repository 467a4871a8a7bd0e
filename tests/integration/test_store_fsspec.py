"""Tier 3 at an fsspec URL: the same behaviour as a directory, and shared by machines.

The S3 tests talk to a real S3-compatible server (moto's server mode) on loopback, run in its
own process so that neither its imports nor its warnings reach this one. Agents and pytest
runs are real processes pointed at it through the standard ``AWS_*`` variables, as a CI runner
would be.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.client import AgentClient
from nodeagent.tiers import Entry, StoreTier
from tests.conftest import OUTCOMES_PLUGIN, QUIET
from tests.integration.conftest import StartAgent

pytestmark = pytest.mark.timeout(300)

BUCKET = "sm-test"

# The moto server prints nothing on stdout but its port; it stops when its stdin closes.
MOTO_SERVER = """
import sys
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 server on a free loopback port, with bucket ``sm-test``; this process and
    every process it starts find it through ``AWS_ENDPOINT_URL`` and test credentials."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None:
        pytest.skip("moto[server] and s3fs are needed (pip install -e '.[test]')")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", MOTO_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"moto server did not start: {log.read_text()[-2000:]}"
        endpoint = f"http://127.0.0.1:{int(line)}"
        with pytest.MonkeyPatch.context() as mp:
            for name, value in {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                # a developer's ~/.aws must not redirect these runs
                "AWS_CONFIG_FILE": str(log.parent / "no-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(log.parent / "no-credentials"),
            }.items():
                mp.setenv(name, value)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "STATEMIGRATE_STORE_OPTIONS"):
                mp.delenv(name, raising=False)
            import fsspec.core

            fs, _ = fsspec.core.url_to_fs(f"s3://{BUCKET}")
            fs.mkdir(BUCKET)
            yield endpoint
    finally:
        proc.stdin.close()
        proc.stdout.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_url(prefix: str = "store") -> str:
    """A fresh prefix in the test bucket."""
    return f"s3://{BUCKET}/{prefix}-{uuid.uuid4().hex[:12]}"


def _rename_fs() -> str:
    """Register ``renamefs://``: the local file system under a protocol fsspec does not treat
    as an object store, so the store writes a temporary file and renames it (the way it
    writes to sftp, hdfs, smb)."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    class RenameFS(LocalFileSystem):  # type: ignore[misc]  # fsspec is untyped
        protocol = ("renamefs",)

    fsspec.register_implementation("renamefs", RenameFS, clobber=True)
    return "renamefs://"


@pytest.fixture(params=["directory", "file", "memory", "rename", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same store behaviour, whatever the location is."""
    kind = request.param
    if kind == "directory":
        return str(tmp_path / "store")
    if kind == "file":
        return (tmp_path / "store").as_uri()
    if kind == "memory":
        return f"memory://sm-{uuid.uuid4().hex[:12]}/store"
    if kind == "rename":
        return _rename_fs() + str(tmp_path / "store")
    request.getfixturevalue("s3_endpoint")
    return s3_url()


def entry(*frames: bytes, version: int = 1, **meta: object) -> Entry:
    return Entry(tuple(frames), meta, version)


def write_raw(store: StoreTier, key: str, data: bytes) -> None:
    """Overwrite ``key``'s stored bytes, as a crashed or foreign writer might."""
    if store.directory is not None:
        Path(store.path(key)).write_bytes(data)
        return
    import fsspec.core

    fs, _ = fsspec.core.url_to_fs(store.location)
    fs.pipe_file(store.path(key), data)


# --------------------------------------------------------------------------- the tier alone


def test_put_get_peek_remove_clear(location: str) -> None:
    store = StoreTier(location)
    assert store.get("k") is None and store.peek("k") is None and "k" not in store
    payload = os.urandom(3 * 2**20)  # several MiB: a peek must not read it
    store.put("k", entry(b"head", payload, version=2, note="x"))
    assert "k" in store
    got = store.get("k")
    assert got is not None and got.version == 2 and dict(got.meta) == {"note": "x"}
    assert [bytes(f) for f in got.frames] == [b"head", payload]
    peeked = store.peek("k")
    assert peeked is not None and peeked[0] == 2
    assert peeked[1] == store.stats()["written_bytes"]  # the size of the whole entry
    store.put("k", entry(b"v3", version=3))  # a newer version replaces the entry whole
    got = store.get("k")
    assert got is not None and got.version == 3 and [bytes(f) for f in got.frames] == [b"v3"]
    assert store.remove("k") is True and store.remove("k") is False
    assert store.get("k") is None and "k" not in store
    store.put("a", entry(b"1"))
    store.put("b", entry(b"2"))
    assert store.clear() == 2
    assert store.get("a") is None and store.get("b") is None
    stats = store.stats()
    assert (stats["hits"], stats["misses"], stats["writes"]) == (2, 4, 4)
    assert stats["location"] == location
    if store.directory is None:
        assert stats["entries"] is None  # a remote store is not listed on every STATS
    else:
        assert stats["entries"] == 0


def test_a_header_longer_than_one_ranged_read(location: str) -> None:
    store = StoreTier(location)
    store.put("k", entry(b"body", version=7, big="m" * 10_000))  # header > 4 KiB
    peeked = store.peek("k")
    assert peeked is not None and peeked[0] == 7
    got = store.get("k")
    assert got is not None and got.meta["big"] == "m" * 10_000


@pytest.mark.parametrize(
    "raw", [b"garbage", b"SMe1\x00\x00\x00\xff", b""], ids=["garbage", "truncated", "empty"]
)
def test_a_corrupt_entry_is_a_miss_and_removed(location: str, raw: bytes) -> None:
    store = StoreTier(location)
    store.put("k", entry(b"good"))
    write_raw(store, "k", raw)
    assert store.peek("k") is None
    assert store.get("k") is None and "k" not in store
    assert store.stats()["corrupt"] == 1
    store.put("other", entry(b"x"))
    write_raw(store, "k", store_bytes(store, "other"))  # a valid entry, of another key
    assert store.get("k") is None and store.stats()["corrupt"] == 2


def store_bytes(store: StoreTier, key: str) -> bytes:
    if store.directory is not None:
        return Path(store.path(key)).read_bytes()
    import fsspec.core

    fs, _ = fsspec.core.url_to_fs(store.location)
    return bytes(fs.cat_file(store.path(key)))


def test_clear_leaves_other_objects_under_the_prefix(tmp_path: Path) -> None:
    url = f"memory://sm-{uuid.uuid4().hex[:12]}/shared"
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/README", b"not ours")
    store = StoreTier(url)
    store.put("k", entry(b"x"))
    assert store.clear() == 1
    assert fs.cat_file(f"{root}/README") == b"not ours"


def test_a_directory_store_does_not_import_fsspec(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from nodeagent.tiers import Entry, StoreTier
        store = StoreTier({str(tmp_path / "store")!r})
        store.put("k", Entry((b"x",), {{}}, 1))
        assert store.get("k") is not None
        assert "fsspec" not in sys.modules, "fsspec imported for a directory"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- the agent


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nosuch://bucket/x", "unknown protocol 'nosuch'"),
        ("gs://bucket/x", "pip install gcsfs"),
    ],
)
def test_an_unusable_url_stops_the_agent_with_one_line(tmp_path: Path, url: str, says: str) -> None:
    if "gcsfs" in says and importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    sock = f"ipc://{tmp_path}/a.sock"
    done = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--bind", sock, "--no-disk", "--store", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nodeagent: error: store ")
    assert url in lines[0] and says in lines[0]


def test_a_value_put_through_one_agent_is_served_by_another(
    s3_endpoint: str, start: StartAgent, tmp_path: Path
) -> None:
    url = s3_url("agents")
    writer = start(disk_dir=str(tmp_path / "disk-a"), store=url)
    reader = start(disk_dir=str(tmp_path / "disk-b"), store=url)
    frames = [os.urandom(1000), os.urandom(2 * 2**20), b""]
    with (
        AgentClient(writer.endpoint, timeout=30) as a,
        AgentClient(reader.endpoint, timeout=30) as b,
    ):
        assert b.get("k") is None
        version = a.put("k", frames, {"kind": "value"})
        a.stats()  # STATS waits for the write-behind: the entry is in the bucket
        assert b.has("k") == "store"
        got = b.get("k")
        assert got is not None and got.tier == "store"
        assert [bytes(f) for f in got.frames] == frames  # byte for byte
        assert got.version == version and dict(got.meta) == {"kind": "value"}
        again = b.get("k")
        assert again is not None and again.tier == "ram"  # promoted on the way
        tiers = b.stats()["tiers"]
        assert tiers["store"]["hits"] == 1 and tiers["store"]["location"] == url
        assert tiers["disk"]["write_through"] is True  # a remote store: keep a local copy
        # Last writer wins in the store; the tiers above it are each agent's own cache: A
        # keeps serving the copy it holds (a key names one value, so only a refresh differs).
        b.put("k", [b"from b"], {"kind": "value"})
        b.stats()
        mine = a.get("k")
        assert mine is not None and mine.tier == "ram" and bytes(mine.frames[1]) == frames[1]
    found = StoreTier(url).get("k")
    assert found is not None and [bytes(f) for f in found.frames] == [b"from b"]


# --------------------------------------------------------------------------- two CI runners

# Building costs far more than a load from the loopback S3 server, so the plugin never
# decides to build instead (invariant 8: an agent's first S3 read took ~0.4 s on a busy
# 2-core machine, against 0.05 s of building, and the value was built in-process).
CONFTEST = """
import time
from pathlib import Path

import pytest

LOG = Path(__file__).parent / "builds.log"

def built(name):
    with open(LOG, "a") as fh:
        fh.write(name + "\\n")
    time.sleep(1.0)

@pytest.fixture(scope="session")
def dataset():
    built("dataset")
    return {"rows": list(range(1000)), "name": "data"}

@pytest.fixture(params=[1, 2])
def scaled(request, dataset):
    built("scaled")
    return [r * request.param for r in dataset["rows"]]
"""

TESTS = """
def test_dataset(dataset):
    assert len(dataset["rows"]) == 1000

def test_scaled(scaled):
    assert scaled[1] in (1, 2)

def test_scaled_mutates(scaled):
    scaled.append("mine")
    assert scaled[-1] == "mine"
"""


def _checkout(path: Path, store: str) -> Path:
    """A project as a CI runner checks it out: the same files, anywhere on the disk."""
    path.mkdir(parents=True)
    (path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\n"
        f"statemigrate_fixtures =\n    dataset\n    scaled\nstatemigrate_store = {store}\n"
    )
    (path / "conftest.py").write_text(CONFTEST)
    (path / "test_data.py").write_text(TESTS)
    (path / "sm_outcomes.py").write_text(OUTCOMES_PLUGIN)
    return path


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, project: Path, *, plugin: bool
) -> tuple[dict[str, str], dict[str, object] | None, list[str], str]:
    """Run pytest in ``project``: (outcomes, stats, fixtures built, output)."""
    outcomes_path = project / ".outcomes.json"
    stats_path = project / ".stats.json"
    for path in (outcomes_path, stats_path, project / "builds.log"):
        path.unlink(missing_ok=True)
    monkeypatch.chdir(project)
    monkeypatch.setenv("SM_OUTCOMES", str(outcomes_path))
    flags = ["-p", "sm_outcomes", *QUIET, f"--rootdir={project}"]
    if plugin:
        flags += ["-p", "statemigrate", f"--sm-stats-json={stats_path}"]
    else:
        flags += ["-p", "no:statemigrate", "-W", "ignore::pytest.PytestConfigWarning"]
    result = pytester.runpytest_subprocess(*flags, timeout=180)
    text = str(result.stdout) + str(result.stderr)
    outcomes = json.loads(outcomes_path.read_text()) if outcomes_path.exists() else {}
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else None
    log = project / "builds.log"
    return outcomes, stats, log.read_text().split() if log.exists() else [], text


def test_two_runners_share_the_store(
    s3_endpoint: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second checkout, at another path and depth, on another "machine" (its own agent,
    disk tier and .statemigrate), builds nothing: its values come from the shared store."""
    monkeypatch.setenv("STATEMIGRATE_SECRET", "shared-by-the-ci-runners-0123456789")
    url = s3_url("runners")
    first = _checkout(pytester.path / "runner-1" / "proj", url)
    second = _checkout(pytester.path / "runner-2" / "builds" / "deep" / "proj", url)

    plain, _, _, text = _run(pytester, monkeypatch, first, plugin=False)
    assert len(plain) == 5, text
    cold, cold_stats, cold_builds, text = _run(pytester, monkeypatch, first, plugin=True)
    assert cold == plain, text
    assert sorted(cold_builds) == ["dataset", "scaled", "scaled"], text
    assert cold_stats is not None and cold_stats["builds"] == 3

    warm, warm_stats, warm_builds, text = _run(pytester, monkeypatch, second, plugin=True)
    assert warm == plain, text
    assert warm_builds == [], text  # no managed fixture body ran
    assert warm_stats is not None and warm_stats["builds"] == 0, text
    hits = warm_stats["hits"]
    assert isinstance(hits, dict) and hits.get("store", 0) >= 3, hits  # read from the bucket

    # A runner with another secret cannot use those entries: it builds, with the same outcomes.
    monkeypatch.setenv("STATEMIGRATE_SECRET", "another-project-0123456789abcdef")
    other = _checkout(pytester.path / "runner-3" / "proj", url)
    alone, _, alone_builds, text = _run(pytester, monkeypatch, other, plugin=True)
    assert alone == plain, text
    assert sorted(alone_builds) == ["dataset", "scaled", "scaled"], text
    assert "bad signature" in text  # said in the summary, not raised


def test_a_bad_store_url_is_one_line_at_configure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _checkout(pytester.path / "proj", "nosuch://bucket/prefix")
    monkeypatch.chdir(project)
    result = pytester.runpytest_subprocess("-p", "statemigrate", *QUIET, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*statemigrate: bad value for statemigrate_store: store 'nosuch://bucket/prefix'*"]
    )


def test_storage_options_from_the_environment(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$STATEMIGRATE_STORE_OPTIONS`` reaches the file system: here the endpoint, with
    ``AWS_ENDPOINT_URL`` gone; anything but a JSON object is one line."""
    from nodeagent.storeurl import OPTIONS_ENV, StoreError

    url = s3_url("options")
    StoreTier(url).put("k", entry(b"via env"))
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}
    monkeypatch.setenv(OPTIONS_ENV, json.dumps(options))
    got = StoreTier(url).get("k")
    assert got is not None and bytes(got.frames[0]) == b"via env"
    for bad in ("{not json", "[1, 2]"):
        monkeypatch.setenv(OPTIONS_ENV, bad)
        with pytest.raises(StoreError) as info:
            StoreTier(url)
        assert OPTIONS_ENV in str(info.value) and "\n" not in str(info.value)


def test_cli_clear_empties_a_url_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_statemigrate.cli import main

    url = f"memory://sm-{uuid.uuid4().hex[:12]}/store"
    store = StoreTier(url)
    store.put("a", entry(b"1"))
    store.put("b", entry(b"2"))
    assert main(["clear", "--dir", str(tmp_path / ".statemigrate"), "--store", url]) == 0
    assert "removed 2 entries from " + url in capsys.readouterr().out
    assert store.get("a") is None and store.get("b") is None
    assert main(["clear", "--dir", str(tmp_path), "--store", "nosuch://x"]) == 2
    assert "unknown protocol 'nosuch'" in capsys.readouterr().err
