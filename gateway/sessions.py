"""The registry of live agent sessions, and their eviction when trust changes.

Each session registers its admission ``Decision`` and a cancel scope as soon as its TLS handshake
is done — before the WebSocket upgrade is read and the upstream connected, so an eviction reaches
it while it opens too — and is checked then against the trust state in force (``admit``), since
the handshake judged it against the state of its accept time. When a new trust state is
swapped in (a revoked key or certificate, the provisioning service turned off, a CA removed, a
tenant removed), ``reevaluate`` asks ``gateway.peer.still_allowed`` about every live session and
closes those that lost their trust, with the reason. One mechanism serves every cause; there is
no per-cause index to keep in step. At 20,000 sessions a pass costs a few milliseconds and runs
at most once per store change.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator, Mapping

import attrs
import trio

from gateway.peer import Decision, TenantTrust, still_allowed

_ids = itertools.count(1)


@attrs.define(eq=False)
class Session:
    decision: Decision
    cancel_scope: trio.CancelScope
    peer: str
    id: int = attrs.field(factory=lambda: next(_ids))
    opened_at: float = attrs.field(factory=trio.current_time)
    close_reason: str | None = None

    def evict(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self.cancel_scope.cancel()


@attrs.define(eq=False)
class SessionRegistry:
    on_evict: Callable[[Session, str], None] | None = None
    _sessions: dict[int, Session] = attrs.field(factory=dict)
    _empty: trio.Event = attrs.field(factory=trio.Event)

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        if self._empty.is_set():
            self._empty = trio.Event()

    def admit(self, session: Session, tenants: Mapping[str, TenantTrust], now: dt.datetime
              ) -> str | None:
        """Register a session whose handshake just completed and re-check its decision against
        ``tenants``, the trust state in force now (a key revoked while the handshake ran was
        applied to the sessions registered then, not to this one). A session the state no longer
        admits is evicted at once, as ``reevaluate`` would; returns that reason, or None."""
        self.add(session)
        reason = still_allowed(session.decision, tenants.get(session.decision.tenant), now)
        if reason is not None:
            session.evict(reason)
            if self.on_evict is not None:
                self.on_evict(session, reason)
        return reason

    def remove(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        if not self._sessions:
            self._empty.set()

    async def wait_empty(self) -> None:
        if self._sessions:
            await self._empty.wait()
        else:
            await trio.lowlevel.checkpoint()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def count_by_tenant(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for session in self._sessions.values():
            counts[session.decision.tenant] = counts.get(session.decision.tenant, 0) + 1
        return counts

    def reevaluate(self, tenants: Mapping[str, TenantTrust], now: dt.datetime) -> list[Session]:
        """Close every session the new trust state no longer admits; return them."""
        evicted = []
        for session in list(self._sessions.values()):
            if session.close_reason is not None:
                continue
            reason = still_allowed(session.decision, tenants.get(session.decision.tenant), now)
            if reason is not None:
                session.evict(reason)
                evicted.append(session)
                if self.on_evict is not None:
                    self.on_evict(session, reason)
        return evicted

    def close_all(self, reason: str) -> None:
        for session in list(self._sessions.values()):
            session.evict(reason)
