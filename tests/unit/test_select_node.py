"""The select-node hook: the plugin's trylast implementation answers when no conftest does."""

from __future__ import annotations

from typing import Any

import pluggy
import pytest

from pytest_statemigrate import hookspecs, plugin
from pytest_statemigrate.engine import AgentInfo, best_agent

MiB = 2**20


def _agents() -> list[AgentInfo]:
    near = AgentInfo("ipc://near", "client", ram_budget=64 * MiB, ram_free=64 * MiB)
    far = AgentInfo("tcp://far:1", "far", ram_budget=512 * MiB, ram_free=512 * MiB)
    return [far, near]


def _hook(*plugins: object) -> Any:
    manager = pluggy.PluginManager("pytest")
    manager.add_hookspecs(hookspecs)
    manager.register(plugin, "statemigrate")
    for extra in plugins:
        manager.register(extra)
    return manager.hook.pytest_statemigrate_select_node


def _ask(hook: Any, held: dict[str, str] | None = None) -> Any:
    return hook(
        partition=3,
        partition_bytes=MiB,
        agents=tuple(_agents()),
        client_host="client",
        held=held or {},
    )


def test_with_no_other_implementation_the_plugin_scores_the_agents() -> None:
    assert _ask(_hook()) == "ipc://near" == best_agent(_agents(), MiB, "client").name
    # RAM on another host does not outweigh the same host; a RAM copy among equals does
    assert _ask(_hook(), {"tcp://far:1": "ram"}) == "ipc://near"


class _Conftest:
    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.asked: list[int] = []

    @pytest.hookimpl
    def pytest_statemigrate_select_node(self, partition: int) -> str | None:
        self.asked.append(partition)
        return self.answer


def test_a_conftest_answer_comes_first_and_none_leaves_it_to_the_default() -> None:
    chooser = _Conftest("tcp://far:1")
    assert _ask(_hook(chooser)) == "tcp://far:1" and chooser.asked == [3]
    abstains = _Conftest(None)
    assert _ask(_hook(abstains)) == "ipc://near" and abstains.asked == [3]
