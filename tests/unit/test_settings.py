"""Settings from ini keys and options: defaults, and one clear line for each bad value."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_statemigrate import settings as st


def build(ini: dict[str, str], **options: Any) -> st.Settings:
    return st.build(
        rootdir=Path("/project"),
        ini=lambda name: [] if name == "statemigrate_fixtures" else ini.get(name, ""),
        option=lambda name: options.get(name),
    )


def test_defaults_need_no_configuration() -> None:
    s = build({})
    assert (s.history, s.write_check_bytes, s.partition_bytes, s.partitioner, s.record) == (
        20,
        64 * 2**10,
        64 * 2**20,
        "metis",
        False,
    )
    assert s.store_dir == Path("/project/.statemigrate")


def test_values_are_read() -> None:
    s = build(
        {
            "statemigrate_history": "5",
            "statemigrate_write_check_bytes": "0",
            "statemigrate_partition_bytes": "1G",
            "statemigrate_partitioner": "spectral",
        },
        sm_record=True,
    )
    assert (s.history, s.write_check_bytes, s.partition_bytes, s.partitioner, s.record) == (
        5,
        0,
        2**30,
        "spectral",
        True,
    )
    assert build({"statemigrate_partitioner": "spectral"}, sm_partitioner="metis").partitioner == (
        "metis"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("statemigrate_history", "0"),
        ("statemigrate_history", "many"),
        ("statemigrate_write_check_bytes", "-1"),
        ("statemigrate_partition_bytes", "0"),
        ("statemigrate_partitioner", "kmeans"),
        ("statemigrate_lease_seconds", "-3"),
        ("statemigrate_prefetch", "yes"),
        ("statemigrate_eviction", "fifo"),
        ("statemigrate_lookahead_tests", "0"),
        ("statemigrate_lookahead_bytes", "lots"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(st.SettingsError) as info:
        build({key: value})
    message = str(info.value)
    assert message.startswith(f"statemigrate: bad value for {key}:") and "\n" not in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nosuch://bucket/x", "unknown protocol 'nosuch'"),
        ("gs://bucket/x", "pip install gcsfs"),  # gcsfs is not a test dependency
        ("simplecache::nosuch://b", "unknown protocol 'nosuch'"),
    ],
)
def test_a_bad_store_url_is_one_line_naming_it_and_the_fix(url: str, says: str) -> None:
    pytest.importorskip("fsspec")
    if "gcsfs" in says and importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(st.SettingsError) as info:
        build({"statemigrate_store": url})
    message = str(info.value)
    assert message.startswith("statemigrate: bad value for statemigrate_store:")
    assert url in message and says in message and "\n" not in message


def test_a_store_url_without_fsspec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec is the ``url`` extra: where it is missing (its import fails, as without the
    extra), a URL store is one line naming what to install."""
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setitem(sys.modules, "fsspec.registry", None)
    with pytest.raises(st.SettingsError) as info:
        build({"statemigrate_store": "s3://bucket/x"})
    assert str(info.value) == (
        "statemigrate: bad value for statemigrate_store: store 's3://bucket/x' is a URL, which "
        "needs fsspec, the url extra: pip install 'pytest-statemigrate[url]'"
    )


def test_a_store_directory_or_known_url_is_kept() -> None:
    assert build({"statemigrate_store": " /data/store "}).store == "/data/store"
    assert build({"statemigrate_store": "memory://shared"}).store == "memory://shared"


@pytest.mark.parametrize(
    ("options", "ini", "named"),
    [
        ({"sm_dir": "taken"}, {}, "--sm-dir=taken"),
        ({}, {"statemigrate_dir": " taken "}, "statemigrate_dir = taken"),
        ({}, {}, "the store directory {root}/.statemigrate (--sm-dir, statemigrate_dir)"),
    ],
)
def test_a_store_directory_that_cannot_be_made_is_one_line_naming_where_it_was_set(
    tmp_path: Path, options: dict[str, str], ini: dict[str, str], named: str
) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    (tmp_path / ".statemigrate").write_text("a file, not a directory")
    s = build_at(tmp_path, ini, **options)
    line = st.store_dir_trouble(s)
    assert line is not None and "\n" not in line
    assert line.startswith(named.format(root=tmp_path) + ": cannot create it (File exists); ")
    assert line.endswith("name a directory that can be made: fixtures run unmanaged")
    assert st.store_dir_trouble(build_at(tmp_path, {}, sm_dir="fine/below")) is None
    assert (tmp_path / "fine" / "below").is_dir()


def with_ini_patterns(*patterns: str, **options: Any) -> st.Settings:
    return st.build(
        rootdir=Path("/project"),
        ini=lambda name: list(patterns) if name == "statemigrate_fixtures" else "",
        option=lambda name: options.get(name),
    )


def test_a_fixtures_option_that_selects_nothing_is_one_line() -> None:
    used = {"corpus", "model", "_private"}
    assert st.patterns_note(with_ini_patterns("corpus")) is None  # no option: nothing to say
    assert st.patterns_note(with_ini_patterns("corpus", sm_fixtures=("m*",)), used) is None
    assert st.patterns_note(with_ini_patterns(sm_fixtures=()), used) is None  # nothing replaced
    empty = with_ini_patterns("corpus", "model", sm_fixtures=())
    assert st.patterns_note(empty) == (
        "--sm-fixtures is empty: it replaces statemigrate_fixtures (corpus, model), whose "
        "fixtures run unmanaged"
    )
    typo = with_ini_patterns("corpus", sm_fixtures=("corpus", "modle", "*vate"))
    assert st.patterns_note(typo) is None  # not collected yet: cannot tell
    assert st.patterns_note(typo, used) == (
        "--sm-fixtures=corpus,modle,*vate: modle, *vate matched no fixture the selected tests use"
    )
    none = with_ini_patterns("corpus", sm_fixtures=("nomatch",))
    assert st.patterns_note(none, used) == (
        "--sm-fixtures=nomatch matched no fixture the selected tests use; it replaces "
        "statemigrate_fixtures (corpus), whose fixtures run unmanaged"
    )
    alone = with_ini_patterns(sm_fixtures=("nomatch",))
    assert st.patterns_note(alone, used) == (
        "--sm-fixtures=nomatch matched no fixture the selected tests use"
    )


def test_prefetch_settings() -> None:
    s = build({})
    assert (s.prefetch, s.eviction, s.lookahead_tests, s.lookahead_bytes, s.plan_json) == (
        True,
        "aggressive",
        16,
        0,
        None,
    )
    s = build(
        {
            "statemigrate_prefetch": "on",
            "statemigrate_eviction": "lru",
            "statemigrate_lookahead_tests": "4",
            "statemigrate_lookahead_bytes": "64M",
        },
        sm_prefetch="off",
        sm_plan="out/plan.json",
    )
    assert (s.prefetch, s.eviction, s.lookahead_tests, s.lookahead_bytes, s.plan_json) == (
        False,
        "lru",
        4,
        64 * 2**20,
        Path("out/plan.json"),
    )


def build_at(rootdir: Path, ini: dict[str, str], **options: Any) -> st.Settings:
    return st.build(
        rootdir=rootdir,
        ini=lambda name: [] if name == "statemigrate_fixtures" else ini.get(name, ""),
        option=lambda name: options.get(name),
    )


def test_a_non_loopback_agent_without_keys_is_one_line_naming_the_fix() -> None:
    with pytest.raises(st.SettingsError) as info:
        build({}, sm_agent="tcp://10.0.0.5:5555")
    assert str(info.value) == (
        "statemigrate: bad agent endpoint: refusing tcp://10.0.0.5:5555: only ipc:// and "
        "loopback tcp:// are allowed without CURVE keys: pass --sm-keys DIR (or the ini key "
        "statemigrate_keys) with the client keys made by `statemigrate keys`"
    )


def test_keys_are_loaded_relative_to_the_rootdir(tmp_path: Path) -> None:
    from nodeagent.curve import create_keys

    create_keys(tmp_path / "keys")
    s = build_at(tmp_path, {"statemigrate_keys": "keys"}, sm_agent="tcp://10.0.0.5:5555")
    assert s.curve is not None and s.curve.directory == tmp_path / "keys"
    assert len(s.curve.secret) == len(s.curve.server) == 40
    assert s.curve.secret.decode() not in repr(s)  # the secret stays out of reprs and logs
    # The command-line option wins over the ini key.
    s = build_at(tmp_path, {"statemigrate_keys": "nowhere"}, sm_agent="ipc:///x", sm_keys="keys")
    assert s.curve is not None


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing", "no key file {dir}/client.key_secret: create keys with `statemigrate keys`"),
        ("no-server-key", "no key file {dir}/server.key: create keys"),
        ("open", "{dir}/client.key_secret is accessible by other users (mode 644): chmod 600"),
        ("public-only", "{dir}/client.key_secret holds no secret-key"),
    ],
)
def test_bad_keys_are_one_line_at_configure_time(
    tmp_path: Path, damage: str, expected: str
) -> None:
    from nodeagent.curve import create_keys

    keys = tmp_path / "keys"
    create_keys(keys)
    if damage == "missing":
        (keys / "client.key_secret").unlink()
    elif damage == "no-server-key":
        (keys / "server.key").unlink()
    elif damage == "open":
        (keys / "client.key_secret").chmod(0o644)
    else:
        (keys / "client.key").replace(keys / "client.key_secret")
    with pytest.raises(st.SettingsError) as info:
        build_at(tmp_path, {}, sm_agent="tcp://10.0.0.5:5555", sm_keys=str(keys))
    message = str(info.value)
    assert message.startswith("statemigrate: bad value for --sm-keys: " + expected.format(dir=keys))
    assert "\n" not in message


def test_keys_are_not_read_without_a_long_lived_agent(tmp_path: Path) -> None:
    """The embedded agent listens on ipc:// without CURVE: an ini key naming keys that exist
    only where the shared agent runs must not break a local run."""
    assert build_at(tmp_path, {"statemigrate_keys": "nowhere"}).curve is None


def test_a_wildcard_agent_is_refused() -> None:
    with pytest.raises(st.SettingsError, match="not \\*"):
        build({}, sm_agent="tcp://127.0.0.1:*")


def test_several_agent_endpoints() -> None:
    s = build({}, sm_agent="ipc:///tmp/a.sock, tcp://127.0.0.1:5555,ipc:///tmp/b.sock")
    assert s.agents == ("ipc:///tmp/a.sock", "tcp://127.0.0.1:5555", "ipc:///tmp/b.sock")
    assert s.agent == "ipc:///tmp/a.sock,tcp://127.0.0.1:5555,ipc:///tmp/b.sock"
    lines = build({"statemigrate_agent": "\nipc:///tmp/a.sock\n  tcp://[::1]:7\n"})
    assert lines.agents == ("ipc:///tmp/a.sock", "tcp://[::1]:7")
    assert build({}).agents == () and build({}).agent is None
    one = build({"statemigrate_agent": "ipc:///tmp/a.sock"})
    assert one.agents == ("ipc:///tmp/a.sock",) and one.agent == "ipc:///tmp/a.sock"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("ipc:///tmp/a.sock,tcp://10.1.2.3:5555", "refusing tcp://10.1.2.3:5555"),
        ("ipc:///tmp/a.sock,ipc:///tmp/a.sock", "ipc:///tmp/a.sock is listed twice"),
        ("tcp://127.0.0.1:*", "name the agent's port"),
    ],
)
def test_a_bad_agent_endpoint_is_one_line(value: str, needle: str) -> None:
    for kwargs in ({"sm_agent": value}, {}):
        ini = {} if kwargs else {"statemigrate_agent": value}
        with pytest.raises(st.SettingsError) as info:
            build(ini, **kwargs)
        message = str(info.value)
        assert message.startswith("statemigrate: bad agent endpoint: ") and needle in message
        assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    ["corpus vocabulary", "corpus,vocabulary", "corpus, vocabulary\n", "\ncorpus\n  vocabulary"],
)
def test_patterns_are_separated_by_commas_spaces_or_lines(text: str) -> None:
    assert st.parse_patterns(text) == ("corpus", "vocabulary")
    lines = [line.strip() for line in text.splitlines() if line.strip()]  # pytest's linelist
    settings = st.build(
        rootdir=Path("/project"),
        ini=lambda name: lines if name == "statemigrate_fixtures" else "",
        option=lambda name: None,
    )
    assert settings.ini_patterns == ("corpus", "vocabulary")
