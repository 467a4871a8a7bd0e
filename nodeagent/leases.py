"""Single-flight build leases: one builder per key at a time, with expiry.

A lease is granted when the key has no lease, the lease expired, its holder's process is dead
(checked only when the holder runs on this machine), or the holder asks again (a renewal).
No threads: expiry is evaluated lazily against ``clock``.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Lease", "LeaseResult", "LeaseTable", "pid_alive"]


def pid_alive(pid: int, host: str | None = None) -> bool:
    """Whether process ``pid`` on this machine is running (a zombie counts as dead).

    ``host`` is accepted for the ``is_alive`` signature; the caller checks it is this machine.
    """
    if pid <= 0:
        return False
    try:
        # lazy: psutil costs an import the idle path should not pay (and has no stubs here)
        psutil: Any = importlib.import_module("psutil")
    except ImportError:  # pragma: no cover - psutil is a dependency of the agent
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but cannot be inspected (access denied)


@dataclass(frozen=True)
class Lease:
    holder: str
    expires_at: float
    pid: int | None
    host: str | None


@dataclass(frozen=True)
class LeaseResult:
    """Outcome of :meth:`LeaseTable.acquire`.

    :param granted: the caller holds the lease now.
    :param holder: who holds it (the caller when granted).
    :param expires_in: seconds until it expires.
    """

    granted: bool
    holder: str | None
    expires_in: float


class LeaseTable:
    """Leases by key.

    :param clock: monotonic seconds.
    :param is_alive: ``(pid, host) -> bool``; consulted only for holders on this machine.
    :param hostname: this machine's name (default ``socket.gethostname()``).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        is_alive: Callable[[int, str | None], bool] = pid_alive,
        hostname: str | None = None,
    ) -> None:
        self._clock = clock
        self._is_alive = is_alive
        self._hostname = socket.gethostname() if hostname is None else hostname
        self._leases: dict[str, Lease] = {}

    def _live(self, key: str, now: float) -> Lease | None:
        lease = self._leases.get(key)
        if lease is None:
            return None
        dead = lease.expires_at <= now or (
            lease.pid is not None
            and lease.host == self._hostname
            and not self._is_alive(lease.pid, lease.host)
        )
        if dead:
            del self._leases[key]
            return None
        return lease

    def acquire(
        self,
        key: str,
        holder: str,
        ttl: float,
        pid: int | None = None,
        host: str | None = None,
    ) -> LeaseResult:
        """Take or renew the lease on ``key`` for ``ttl`` seconds."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = self._clock()
        lease = self._live(key, now)
        if lease is not None and lease.holder != holder:
            return LeaseResult(False, lease.holder, max(0.0, lease.expires_at - now))
        self._leases[key] = Lease(holder, now + ttl, pid, host)
        return LeaseResult(True, holder, float(ttl))

    def release(self, key: str, holder: str) -> bool:
        """Give up ``holder``'s lease on ``key``; False if ``holder`` does not hold it."""
        lease = self._live(key, self._clock())
        if lease is None or lease.holder != holder:
            return False
        del self._leases[key]
        return True

    def drop(self, key: str) -> bool:
        """Remove any lease on ``key`` (a PUT of the key ends its build)."""
        return self._leases.pop(key, None) is not None

    def holder(self, key: str) -> str | None:
        lease = self._live(key, self._clock())
        return None if lease is None else lease.holder

    def __len__(self) -> int:
        now = self._clock()
        for key in list(self._leases):
            self._live(key, now)
        return len(self._leases)
