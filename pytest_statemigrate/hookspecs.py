"""Hooks that conftest files and plugins may implement (registered by plugin.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .engine import AgentInfo


@pytest.hookspec(firstresult=True)
def pytest_statemigrate_select_node(
    partition: int, partition_bytes: int, agents: Sequence[AgentInfo], client_host: str
) -> Any:
    """Choose the agent that holds ``partition`` for this run, or return None to let the
    engine choose (same host first, then free RAM, then least queued work and load).

    :param partition: the partition's id (see ``statemigrate partitions``).
    :param partition_bytes: its size.
    :param agents: what each agent reported in STATS (``name`` is its endpoint; ``host``,
        ``ram_budget``, ``ram_free``, ``cpu_load``, ``queued_bytes``, ``read_bandwidth``).
    :param client_host: the host name of the process that runs the tests.
    :returns: an agent's name (endpoint), one of ``agents``, or None. Naming no known agent
        is reported in the summary and the engine's choice is used.

    Called once per partition when the run's plan is made (after collection), first result
    wins. Mark the implementation ``@pytest.hookimpl(optionalhook=True)``, so that the
    conftest also loads where the plugin is not (``-p no:statemigrate``).
    """
