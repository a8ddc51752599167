"""Several vLLM servers behind one engine: which server gets the next request, and which are left out.

A request goes to the healthy server with the fewest requests in flight (ties go round the list, so pages that
arrive one by one still alternate). A server whose request fails transiently (refused connection, 502/503/504,
a dropped stream: ``EngineError.transient``) is left out for a backoff that doubles with each consecutive
failure, from ``backoff`` to ``max_backoff`` seconds. When its backoff ends, one request goes through as a trial:
if the server answers, it is back; if not, it is left out for twice as long.

When every server is out, a request still goes somewhere rather than failing at once: to the server whose
backoff ends first. With one server that is every request, which is how a single ``LLM_BASE_URL`` has always
behaved.

The state is process-wide (a plain lock, not an asyncio one): tests and commands may run several event loops,
and they all talk to the same servers. Nothing here waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ocr import metrics

logger = logging.getLogger(__name__)

BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0


def server_label(url: str) -> str:
    """``host:port`` of a base URL: the metrics label of a server (never anything a user sent)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


class Server:
    """One configured server and what this process knows of it."""

    __slots__ = ("epoch", "failures", "in_flight", "index", "label", "retry_at", "trial", "url")

    def __init__(self, index: int, url: str, label: str) -> None:
        self.index = index
        self.url = url
        self.label = label
        self.in_flight = 0
        #: Consecutive times the server was left out; sets the length of the next backoff.
        self.failures = 0
        #: When the backoff ends (``clock`` time); 0 while the server is healthy.
        self.retry_at = 0.0
        #: Whether the one trial request after the backoff is in flight.
        self.trial = False
        #: Bumped each time the server is left out, so that the failures of requests sent before that count once.
        self.epoch = 0

    @property
    def healthy(self) -> bool:
        return self.retry_at == 0.0

    def __repr__(self) -> str:
        return f"Server({self.label}, in_flight={self.in_flight}, retry_at={self.retry_at})"


@dataclass(slots=True)
class Ticket:
    """One request's hold on a server, from ``acquire`` to ``release``."""

    server: Server
    epoch: int
    trial: bool = False
    released: bool = False


class ServerPool:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        backoff: float = BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a server pool needs at least one URL")
        labels: list[str] = []
        for url in urls:
            label = server_label(url)
            # Two URLs on one host:port (different paths) still need labels of their own.
            labels.append(label if label not in labels else f"{label}#{len(labels) + 1}")
        self.servers = [Server(index, url, label) for index, (url, label) in enumerate(zip(urls, labels, strict=True))]
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.clock = clock
        self._lock = threading.Lock()
        self._next = 0  # where the round of ties starts
        for server in self.servers:
            metrics.engine_server_state(server=server.label, up=True)

    def _available(self, server: Server, now: float) -> bool:
        return server.healthy or (now >= server.retry_at and not server.trial)

    def acquire(self) -> Ticket:
        """Choose the server for one request and count it in flight there."""
        with self._lock:
            now = self.clock()
            servers = self.servers
            candidates = [server for server in servers if self._available(server, now)]
            trial = False
            if candidates:
                count, start = len(servers), self._next
                server = min(candidates, key=lambda s: (s.in_flight, (s.index - start) % count))
                self._next = (server.index + 1) % count
                if not server.healthy:
                    server.trial = trial = True
            else:
                server = min(servers, key=lambda s: (s.retry_at, s.in_flight))
            server.in_flight += 1
            ticket = Ticket(server, server.epoch, trial)
        metrics.engine_request_started(server=server.label)
        return ticket

    def answered(self, ticket: Ticket) -> None:
        """The server answered the request (a response, even an error one): it is healthy."""
        server = ticket.server
        with self._lock:
            if ticket.epoch != server.epoch:
                return  # sent before the server was left out; the trial decides when it comes back
            back = not server.healthy
            server.retry_at = 0.0
            server.failures = 0
            server.trial = False
        if back:
            logger.info("engine server %s answers again", server.label)
            metrics.engine_server_state(server=server.label, up=True)

    def failed(self, ticket: Ticket) -> bool:
        """The request failed transiently: leave the server out (unless it already is). True if it was left out
        now."""
        server = ticket.server
        with self._lock:
            now = self.clock()
            if ticket.epoch != server.epoch or (not server.healthy and now < server.retry_at):
                # Already left out (by a request of the same outage, or while its backoff runs): count once.
                return False
            delay = min(self.max_backoff, self.backoff * 2 ** min(server.failures, 32))
            server.failures += 1
            server.retry_at = now + delay
            server.epoch += 1
            server.trial = False
        logger.warning("engine server %s left out for %g s after a failure", server.label, delay)
        metrics.engine_server_state(server=server.label, up=False, ejected=True)
        return True

    def release(self, ticket: Ticket, *, result: str) -> None:
        """The request is over; ``result`` is ``done``, an error code or ``cancelled`` (for the metrics)."""
        if ticket.released:
            return
        ticket.released = True
        server = ticket.server
        with self._lock:
            server.in_flight -= 1
            if ticket.trial and ticket.epoch == server.epoch:
                server.trial = False  # a trial that ended without a verdict (cancelled, a timeout): try again
        metrics.engine_request_finished(server=server.label, result=result)

    def has_available(self) -> bool:
        """Whether some server would take a request now without waiting out a backoff."""
        with self._lock:
            now = self.clock()
            return any(self._available(server, now) for server in self.servers)

    def server_for(self, label: str) -> Server:
        return next(server for server in self.servers if server.label == label)
