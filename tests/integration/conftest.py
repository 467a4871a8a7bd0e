"""Fixtures that start real ``python -m nodeagent`` processes and always stop them."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nodeagent.client import AgentClient
from nodeagent.launcher import AgentProcess, start_agent

StartAgent = Callable[..., AgentProcess]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartAgent]:
    """``start(**kwargs)`` starts an agent (disk tier under tmp_path unless given)."""
    agents: list[AgentProcess] = []

    def _start(**kwargs: Any) -> AgentProcess:
        kwargs.setdefault("disk_dir", str(tmp_path / "disk"))
        kwargs.setdefault("log_file", str(tmp_path / f"agent{len(agents)}.log"))
        agent = start_agent(**kwargs)
        agents.append(agent)
        return agent

    yield _start
    for agent in agents:
        agent.stop()


@pytest.fixture
def agent(start: StartAgent) -> AgentProcess:
    return start()


@pytest.fixture
def client(agent: AgentProcess) -> Iterator[AgentClient]:
    with AgentClient(agent.endpoint, timeout=10) as c:
        yield c


def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (generous: this machine is noisy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {check}")
        time.sleep(0.02)


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """``path`` as a tmpfs of ``size`` (``"1m"``): a disk that really fills up. Skips the test
    where mounting is impossible (not root, no mount); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)
