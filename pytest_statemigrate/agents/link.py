"""A link to one agent: opened lazily, first contact within seconds, down for the rest of the
run once it fails; beside it, this machine's disk tier when the run has one in-process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from nodeagent.protocol import Fetched

if TYPE_CHECKING:
    from nodeagent.client import AgentClient
    from nodeagent.curve import ClientKeys

__all__ = ["FIRST_PING_SECONDS", "AgentLink", "LocalAccess"]

FIRST_PING_SECONDS: Final = 2.0  # longest wait for an agent's first answer in a run


class LocalAccess(Protocol):
    """This machine's disk tier beside the agent (:class:`.embedded.EmbeddedAgent`)."""

    def started_empty(self) -> bool:
        """The agent started on an empty store and serves this process alone."""

    def local_get(self, key: str) -> Fetched | None:
        """``key`` from the disk tier, or None to ask the agent."""

    def local_miss(self) -> bool:
        """A key :meth:`local_get` did not find is a miss without asking an agent."""

    def local_client(self) -> Any:
        """An in-process stand-in for the agent (the same methods), or None to connect."""


class AgentLink:
    """A lazily opened client to the agent; once the agent fails, it stays down for the run.

    :param name: the agent's name on the ring (its endpoint), for a link among several.
    :param curve: CURVE keys for long-lived agents (settings.curve).
    :param connect_timeout: seconds a request waits for a connection to be made before the
        agent counts as down (a host that cannot be reached); None: the whole ``timeout``.
    :param local: this machine's disk tier beside the agent, or instead of it (the run's
        embedded agent).
    """

    def __init__(
        self,
        endpoint: Callable[[], str],
        timeout: float,
        name: str = "",
        curve: ClientKeys | None = None,
        connect_timeout: float | None = None,
        local: LocalAccess | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.local = local
        self.name = name
        self._timeout = timeout
        self._curve = curve
        self._connect_timeout = connect_timeout
        #: Several agents: the first contact is a RING (the agents, and this one's name)
        #: instead of a PING; it answers the same fields.
        self.ring: tuple[str, ...] = ()
        self.rtt: float | None = None  # s: the first contact's round trip
        self._client: AgentClient | Any = None  # or the in-process stand-in
        self.write_errors: int | None = None  # the agent's failed writes at first contact
        self.down: str | None = None
        self.on_down: Callable[[str], None] | None = None

    def client(self) -> AgentClient | Any:
        if self.down is not None:
            return None
        if self._client is None:
            try:
                local = self.local.local_client() if self.local is not None else None
            except Exception as exc:  # the disk tier or agent could not start: build here
                self.fail(exc)
                return None
            if local is not None:
                self._client = local
                self.write_errors = 0
                return local
            from nodeagent.client import AgentClient

            try:
                self._client = AgentClient(
                    self.endpoint(),
                    timeout=self._timeout,
                    curve=self._curve,
                    connect_timeout=self._connect_timeout,
                    # It answered this run before: a refused connection now means it died
                    # (every waiting request fails at once, not after the timeout).
                    was_up=self.write_errors is not None,
                )
                if self.write_errors is None:
                    # First contact: an agent that is not there fails over in seconds, not
                    # after a whole request timeout.
                    wait = min(FIRST_PING_SECONDS, self._timeout)
                    started = time.perf_counter()
                    if self.ring:
                        reply = self._client.ring(self.ring, self.name, timeout=wait)
                    else:
                        reply = self._client.ping(timeout=wait)
                    self.rtt = time.perf_counter() - started
                    self.write_errors = int(reply.get("write_errors") or 0)
            except Exception as exc:
                self.fail(exc)
                return None
        return self._client

    def fail(self, exc: BaseException) -> None:
        if self.ring:
            self.down = f"agent {self.name} down ({exc}); its keys went to the other agents"
        else:
            self.down = f"agent unavailable ({exc}); values were built in-process"
        self.close()
        if self.on_down is not None:
            self.on_down(self.down)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def cold_start(self) -> bool:
        """Looking up a key this process has not stored is pointless: an embedded agent that
        started on an empty store and serves this process alone (a cold run)."""
        return self.local is not None and self.local.started_empty()

    def local_get(self, key: str) -> Fetched | None:
        """``key`` read from this machine's disk tier instead of the agent, or None."""
        return self.local.local_get(key) if self.local is not None else None

    def local_miss(self) -> bool:
        """Asked when :meth:`local_get` found nothing: True when that is a miss without asking
        an agent (none has started yet, and one would serve that same disk tier); it then
        starts one, which boots while the value builds."""
        return self.local is not None and self.local.local_miss()
