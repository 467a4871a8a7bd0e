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

from nodeagent.protocol import MAX_LEASES_PER_HOLDER

__all__ = ["Lease", "LeaseResult", "LeaseTable", "TooManyLeases", "pid_alive"]


class TooManyLeases(Exception):
    """A holder asked for one lease more than it may hold at once."""

    error = "too-many-leases"


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
    :param max_per_holder: live leases one holder may hold; one more is refused
        (:class:`TooManyLeases`). A builder holds one lease per value it builds at once.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        is_alive: Callable[[int, str | None], bool] = pid_alive,
        hostname: str | None = None,
        max_per_holder: int = MAX_LEASES_PER_HOLDER,
    ) -> None:
        self._clock = clock
        self._is_alive = is_alive
        self._hostname = socket.gethostname() if hostname is None else hostname
        self._leases: dict[str, Lease] = {}
        self.max_per_holder = max_per_holder
        self._held: dict[str, set[str]] = {}  # holder -> keys it holds (some maybe expired)

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
            self._remove(key)
            return None
        return lease

    def _remove(self, key: str) -> Lease | None:
        lease = self._leases.pop(key, None)
        if lease is not None:
            keys = self._held.get(lease.holder)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._held[lease.holder]
        return lease

    def _room(self, holder: str, now: float) -> bool:
        """Whether ``holder`` may take one more lease (its expired ones are dropped first)."""
        keys = self._held.get(holder)
        if keys is None or len(keys) < self.max_per_holder:
            return True
        for key in list(keys):
            self._live(key, now)
        return len(self._held.get(holder, ())) < self.max_per_holder

    def acquire(
        self,
        key: str,
        holder: str,
        ttl: float,
        pid: int | None = None,
        host: str | None = None,
    ) -> LeaseResult:
        """Take or renew the lease on ``key`` for ``ttl`` seconds.

        :raises TooManyLeases: ``holder`` holds ``max_per_holder`` other live leases.
        """
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = self._clock()
        lease = self._live(key, now)
        if lease is not None and lease.holder != holder:
            return LeaseResult(False, lease.holder, max(0.0, lease.expires_at - now))
        if lease is None and not self._room(holder, now):
            raise TooManyLeases(
                f"lease: holder {holder[:80]!r} holds {self.max_per_holder} leases, the most "
                "one holder may hold: release or PUT some first"
            )
        self._leases[key] = Lease(holder, now + ttl, pid, host)
        self._held.setdefault(holder, set()).add(key)
        return LeaseResult(True, holder, float(ttl))

    def release(self, key: str, holder: str) -> bool:
        """Give up ``holder``'s lease on ``key``; False if ``holder`` does not hold it."""
        lease = self._live(key, self._clock())
        if lease is None or lease.holder != holder:
            return False
        self._remove(key)
        return True

    def drop(self, key: str) -> bool:
        """Remove any lease on ``key`` (a PUT of the key ends its build)."""
        return self._remove(key) is not None

    def holder(self, key: str) -> str | None:
        lease = self._live(key, self._clock())
        return None if lease is None else lease.holder

    def __len__(self) -> int:
        now = self._clock()
        for key in list(self._leases):
            self._live(key, now)
        return len(self._leases)
