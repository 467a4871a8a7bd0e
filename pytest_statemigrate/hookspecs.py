"""Hooks that conftest files and plugins may implement (registered by plugin.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .engine import AgentInfo


@pytest.hookspec(firstresult=True)
def pytest_statemigrate_select_node(
    partition: int | None,
    partition_bytes: int,
    agents: Sequence[AgentInfo],
    client_host: str,
    held: Mapping[str, str],
) -> Any:
    """Choose the agent that holds ``partition`` for this run.

    The plugin's own implementation (``trylast``) scores the agents: same host first, then
    holding the partition in RAM, then free RAM, then least queued work and load (docs/engine.md).
    A conftest or plugin that returns an answer first is used instead; returning None leaves
    the choice to the next implementation.

    :param partition: the partition's id (see ``statemigrate partitions``).
    :param partition_bytes: its size.
    :param agents: what each agent reported in STATS (``name`` is its endpoint; ``host``,
        ``ram_budget``, ``ram_free``, ``cpu_load``, ``queued_bytes``, ``read_bandwidth``).
    :param client_host: the host name of the process that runs the tests.
    :param held: agent name -> the tier (``"ram"``, ``"disk"``, ``"store"``) where that agent
        has the partition, as the location directories know it.
    :returns: an agent's name (endpoint), one of ``agents``, or None. Naming no known agent
        is reported in the summary and the plugin's own choice is used.

    Called once per partition when the run's plan is made (after collection), first result
    wins. An implementation takes only the arguments it names. Mark it
    ``@pytest.hookimpl(optionalhook=True)``, so that the conftest also loads where the plugin
    is not (``-p no:statemigrate``).
    """
