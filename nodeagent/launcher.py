"""Start and stop ``python -m nodeagent`` processes, without threads in the caller.

The ready line is read from the agent's stdout with a selector and a deadline; the agent's
stderr goes to ``log_file`` or, when none is given, to a file in the agent's private temp
directory so a failed start can report its tail (DEVNULL would lose the reason).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final

from nodeagent.private import private_file

if TYPE_CHECKING:
    from nodeagent.client import AgentError
    from nodeagent.curve import ClientKeys

# nodeagent.client (hence zmq, ~20 ms of imports) and nodeagent.curve are imported where they
# are used: a process that only spawns an agent without keys and stops it unasked (xdist's
# controller) never talks to it.

__all__ = ["AgentProcess", "local_endpoint", "spawn_agent", "start_agent"]

READY_PREFIX: Final = "nodeagent ready "
STDERR_TAIL_BYTES: Final = 2000  # bytes of the agent's stderr quoted in a start failure
_PACKAGE_ROOT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tail(path: str | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - STDERR_TAIL_BYTES))
            text = fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f"; stderr: {text}" if text else ""


class AgentProcess:
    """A running agent started by :func:`start_agent`."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        endpoint: str,
        temp_dir: str,
        log_path: str,
        client_keys: ClientKeys | None = None,
    ) -> None:
        self.process = process
        self.endpoint = endpoint
        #: Keys this launcher talks to its CURVE agent with (PING when ready, SHUTDOWN).
        self.client_keys = client_keys
        self.pid = process.pid
        self.log_path = log_path
        self._temp_dir: str | None = temp_dir
        self.ready = False

    def wait_ready(self, timeout: float = 10.0) -> AgentProcess:
        """Wait for the ready line and a PING answer (once); stop the agent on failure.

        :raises AgentError: with the agent's stderr tail when it exits or misses the deadline.
        """
        if self.ready:
            return self
        from nodeagent.client import AgentClient, AgentError

        deadline = time.monotonic() + timeout
        proc, bind = self.process, self.endpoint

        def fail(problem: str) -> AgentError:
            self.stop(timeout=2.0)
            return AgentError(bind, "start", f"{problem}{_tail(self.log_path)}")

        line = _read_ready_line(proc, deadline)
        if line is None or not line.startswith(READY_PREFIX):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
            if proc.returncode is not None:
                raise fail(f"agent exited with status {proc.returncode}") from None
            raise fail(f"agent not ready within {timeout:g} s")
        self.endpoint = local_endpoint(line[len(READY_PREFIX) :].strip())
        assert proc.stdout is not None
        proc.stdout.close()
        try:
            with AgentClient(
                self.endpoint,
                timeout=max(0.5, deadline - time.monotonic()),
                curve=self.client_keys,
            ) as c:
                c.ping()
        except AgentError as exc:
            raise fail(f"agent does not answer PING: {exc}") from None
        self.ready = True
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SHUTDOWN the agent, then terminate, then kill; remove its temp directory.

        :returns: the exit status.
        """
        proc = self.process
        asked = False
        if proc.poll() is None and self.ready:
            from nodeagent.client import AgentClient, AgentError

            with (
                contextlib.suppress(AgentError),
                AgentClient(
                    self.endpoint, timeout=min(timeout, 2.0), curve=self.client_keys
                ) as client,
            ):
                client.shutdown()
                asked = True
        if proc.poll() is None:
            # Wait for a SHUTDOWN that was acknowledged; otherwise terminate at once (an agent
            # that was spawned but never waited for has not been asked anything).
            for stop in ((None,) if asked else ()) + (proc.terminate, proc.kill):
                if stop is not None:
                    with contextlib.suppress(ProcessLookupError):
                        stop()
                try:
                    proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc.stdout is not None:
            proc.stdout.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        return proc.returncode

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def local_endpoint(endpoint: str) -> str:
    """The endpoint a process on this machine connects to for an agent bound to ``endpoint``:
    a wildcard address (``0.0.0.0``, ``[::]``, ``*``) becomes the loopback address."""
    for wildcard, loopback in (
        ("tcp://0.0.0.0:", "tcp://127.0.0.1:"),
        ("tcp://*:", "tcp://127.0.0.1:"),
        ("tcp://[::]:", "tcp://[::1]:"),
    ):
        if endpoint.startswith(wildcard):
            return loopback + endpoint[len(wildcard) :]
    return endpoint


def _read_ready_line(proc: subprocess.Popen[bytes], deadline: float) -> str | None:
    """Read stdout until a newline or the deadline; None if the agent exited or timed out."""
    stdout = proc.stdout
    assert stdout is not None
    buf = b""
    if sys.platform == "win32":  # pragma: no cover - selectors do not support pipes there
        line = stdout.readline()
        return line.decode("utf-8", "replace") if line else None
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                return None
            buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace")


def start_agent(*, timeout: float = 10.0, **options: Any) -> AgentProcess:
    """Start an agent process and wait until it answers PING (see :func:`spawn_agent`).

    :raises AgentError: with the agent's stderr tail when it exits or misses the deadline.
    """
    return spawn_agent(**options).wait_ready(timeout)


def spawn_agent(
    *,
    bind: str | None = None,
    disk_dir: str | None,
    ram_bytes: int | None = None,
    disk_bytes: int | None = None,
    store: str | None = None,
    store_latency: float | None = None,
    store_bandwidth: int | None = None,
    parent_pid: int | None = None,
    python: str = sys.executable,
    log_file: str | None = None,
    log_level: str | None = None,
    curve_dir: str | None = None,
) -> AgentProcess:
    """Start an agent process without waiting for it: call :meth:`AgentProcess.wait_ready`.

    :param bind: endpoint; default an ipc socket in a fresh temp dir (loopback tcp on Windows).
    :param disk_dir: disk tier directory; None runs the agent without a disk tier.
    :param store_latency: seconds added to every store read (slow-store simulation).
    :param store_bandwidth: cap on store read throughput, bytes/s (slow-store simulation).
    :param curve_dir: serve CURVE with the keys in this directory (``--curve-dir``); the
        launcher talks to the agent with the client keys of the same directory, which must
        hold them too (as ``statemigrate keys`` makes it).
    """
    client_keys = None
    if curve_dir is not None:
        from nodeagent.curve import ClientKeys, KeysError

        try:
            client_keys = ClientKeys.load(curve_dir)
        except KeysError as exc:
            from nodeagent.client import AgentError

            raise AgentError(
                bind or "agent", "start", f"no client keys to reach it: {exc}"
            ) from None
    temp_dir = tempfile.mkdtemp(prefix="sm-")
    if bind is None:
        bind = "tcp://127.0.0.1:*" if os.name == "nt" else f"ipc://{temp_dir}/agent.sock"
    log_path = log_file or os.path.join(temp_dir, "agent.log")
    cmd = [python, "-m", "nodeagent", "--bind", bind]
    cmd += ["--no-disk"] if disk_dir is None else ["--disk-dir", disk_dir]
    if ram_bytes is not None:
        cmd += ["--ram-bytes", str(ram_bytes)]
    if disk_bytes is not None:
        cmd += ["--disk-bytes", str(disk_bytes)]
    if store is not None:
        cmd += ["--store", store]
    if store_latency is not None:
        cmd += ["--store-latency", repr(float(store_latency))]
    if store_bandwidth is not None:
        cmd += ["--store-bandwidth", str(int(store_bandwidth))]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    if log_level is not None:
        cmd += ["--log-level", log_level]
    if curve_dir is not None:
        cmd += ["--curve-dir", curve_dir]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    try:
        # 0600: the log names keys and endpoints (the temp directory is 0700 already).
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        log_fh: IO[bytes] = os.fdopen(fd, "ab")
    except OSError as exc:
        from nodeagent.client import AgentError

        shutil.rmtree(temp_dir, ignore_errors=True)
        why = f"cannot open its log {log_path}: {exc.strerror or exc}"
        raise AgentError(bind, "start", why) from None
    private_file(log_path)  # one an earlier version made 0644
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_fh,
            close_fds=True,
            start_new_session=os.name != "nt",
            env=env,
        )
    except OSError as exc:
        from nodeagent.client import AgentError

        log_fh.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise AgentError(bind, "start", f"cannot run {python}: {exc}") from None
    log_fh.close()
    return AgentProcess(proc, bind, temp_dir, log_path, client_keys)
