"""Static rules for what can be managed (docs/keys.md, refusals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_statemigrate import fixtures as fx
from pytest_statemigrate import state

HERE = Path(__file__).parent


def plain() -> int:
    return 1


def gen() -> Any:
    yield 1


async def coro() -> int:
    return 1


def by_param(request: Any) -> int:
    return int(request.param)


def by_node(request: Any) -> str:
    return str(request.node.name)


def by_config(request: Any) -> Any:
    return request.config.getoption("x")


def passes_request(request: Any) -> Any:
    return plain.__call__ if request else helper(request)


def helper(request: Any) -> Any:
    return request


@pytest.mark.parametrize(
    ("func", "argnames", "refused", "uses_node"),
    [
        (plain, (), None, False),
        (gen, (), "yield fixture*", False),
        (coro, (), "async fixture*", False),
        (by_param, ("request",), None, False),
        (by_node, ("request",), None, True),
        (by_config, ("request",), "uses request.config*", False),
        (passes_request, ("request",), "passes `request` on*", False),
    ],
)
def test_analyse(
    func: Any, argnames: tuple[str, ...], refused: str | None, uses_node: bool
) -> None:
    import fnmatch

    result = fx.analyse(func.__name__, func, argnames, HERE)
    if refused is None:
        assert result.refused is None
    else:
        assert result.refused is not None and fnmatch.fnmatch(result.refused, refused)
    assert result.uses_node is uses_node
    assert result.fixture_id.endswith(f"test_fixtures_analysis.py::{func.__name__}")


def test_outside_the_rootdir_needs_the_decorator(tmp_path: Path) -> None:
    assert fx.analyse("plain", plain, (), tmp_path).refused is not None
    decorated = state(lambda: 1)
    assert fx.analyse("lam", decorated, (), tmp_path).refused is None


def test_selection() -> None:
    assert fx.is_selected("data_big", plain, ("data_*",))
    assert not fx.is_selected("model", plain, ("data_*",))
    assert fx.is_selected("model", state(lambda: 1), ())
    # pytest's factories are never selected: the fixtures using them are managed with files
    from _pytest.tmpdir import tmp_path_factory

    assert not fx.is_selected("tmp_path_factory", tmp_path_factory, ("*",))
    assert fx.is_selected("tmp_path_factory", plain, ("*",))  # a project's own, by that name


def test_unmanaged_dependencies() -> None:
    assert fx.unmanaged_dependency_refusal("x", plain, HERE) is None
    assert "yield fixture" in (fx.unmanaged_dependency_refusal("x", gen, HERE) or "")
    assert "side effects" in (
        fx.unmanaged_dependency_refusal("tmp_path", plain, Path("/nowhere")) or ""
    )
    assert "reads `request`" in (fx.unmanaged_dependency_refusal("x", by_node, HERE) or "")
