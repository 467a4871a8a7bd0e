"""Settings from ini keys and options: defaults, and one clear line for each bad value."""

from __future__ import annotations

import importlib.util
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


def test_a_store_directory_or_known_url_is_kept() -> None:
    assert build({"statemigrate_store": " /data/store "}).store == "/data/store"
    assert build({"statemigrate_store": "memory://shared"}).store == "memory://shared"


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
