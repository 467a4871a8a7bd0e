"""What each process imports, in a fresh interpreter: modules a path does not use stay out of it.

Every pytest process of a run (and xdist's controller and workers, and the agent) pays for what
it imports; these tests pin the imports that cost the most and are not needed where they were
made (measured with ``python -X importtime``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def new_modules(code: str, setup: str = "") -> set[str]:
    """The modules that ``code`` imports in a fresh interpreter, after ``setup``."""
    script = (
        f"import sys\n{setup}\nbefore = set(sys.modules)\n{code}\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_agent_client_imports_no_asyncio() -> None:
    # zmq.utils.monitor imports zmq.asyncio, hence asyncio and ssl (~30 ms in every process
    # that talks to an agent, the agent itself included): the client decodes monitor events.
    new = new_modules("import nodeagent.client")
    assert "zmq" in new
    assert not new & {"asyncio", "ssl", "zmq.asyncio", "zmq.utils.monitor"}
    assert "nodeagent.curve" not in new  # keys are loaded by whoever has them (settings)


def test_the_agent_imports_no_asyncio() -> None:
    new = new_modules("import nodeagent.__main__, nodeagent.server, nodeagent.tiers")
    assert "nodeagent.server" in new
    assert not new & {"asyncio", "ssl", "zmq.asyncio", "zmq.utils.monitor"}


def test_spawning_an_agent_imports_no_zmq() -> None:
    # xdist's controller spawns the run's agent and stops it without a word to it.
    new = new_modules("import nodeagent.launcher")
    assert not {m for m in new if m == "zmq" or m.startswith("zmq.")}
    assert not new & {"nodeagent.client", "nodeagent.curve"}


def test_the_session_imports_no_planner() -> None:
    # Planning (migrate.py, engine.py) and the ESG's medians need an ESG: a cold run has none.
    new = new_modules("import pytest_statemigrate.session", setup="import pytest")
    assert "pytest_statemigrate.esg" in new
    assert not new & {"pytest_statemigrate.migrate", "pytest_statemigrate.engine", "statistics"}


def test_a_suite_that_manages_nothing_imports_no_esg(tmp_path: Path) -> None:
    # An installed plugin that manages nothing pays for its import and one pytest_configure;
    # whether `-n` should schedule by affinity is asked only under -n (an ESG may say so).
    (tmp_path / "test_a.py").write_text("def test_a():\n    pass\n")
    args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "statemigrate"]
    new = new_modules(f"pytest.main({[*args, str(tmp_path)]!r})", setup="import pytest")
    assert "pytest_statemigrate.plugin" in new
    assert not new & {f"pytest_statemigrate.{m}" for m in ("esg", "session", "shard")}
