"""The registry of live agent sessions, and their eviction when trust changes.

Each session registers its admission ``Decision`` and a cancel scope as soon as its TLS handshake
is done — before the WebSocket upgrade is read and the upstream connected, so an eviction reaches
it while it opens too — and is checked then against the trust state in force (``admit``), since
the handshake judged it against the state of its accept time. When a new trust state is
swapped in (a revoked key or certificate, the provisioning service turned off, a CA removed, a
tenant removed), ``reevaluate`` asks ``gateway.peer.still_allowed`` about every live session and
closes those that lost their trust, with the reason. One rule decides for every cause.

Which sessions are asked: every one (a pass costs about 20 µs per session, 0.2 s for 10,000),
except in the common case of a provisioning key revoked and nothing else changed (``key_delta``:
the new state equals the last one checked but for keys added to ``revoked_keys``): then only the
sessions admitted by those keys, found in an index by key id kept as sessions come and go. Time
alone (an expired certificate) is caught by a full pass at least every ``FULL_PASS_INTERVAL``
(the serving process rebuilds its trust state every minute even when nothing changed, and a
state equal to the last one gets a full pass).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator, Mapping

import attrs
import trio

from gateway.peer import Decision, TenantTrust, still_allowed

_ids = itertools.count(1)
#: A narrow pass (``key_delta``) is taken only this long after the last full one.
FULL_PASS_INTERVAL = dt.timedelta(seconds=60)


def key_delta(old: Mapping[str, TenantTrust] | None, new: Mapping[str, TenantTrust]
              ) -> frozenset[str] | None:
    """Pure: the provisioning keys newly revoked from ``old`` to ``new`` when that is the only
    change (every tenant otherwise equal), else None (every session must be asked). An empty
    set: nothing changed at all, which also answers None (a rebuild for time's sake)."""
    if old is None or old.keys() != new.keys():
        return None
    added: set[str] = set()
    for name, tenant in new.items():
        before = old[name]
        if tenant is before:
            continue
        if not before.revoked_keys <= tenant.revoked_keys or \
                attrs.evolve(before, revoked_keys=tenant.revoked_keys) != tenant:
            return None
        added |= tenant.revoked_keys - before.revoked_keys
    return frozenset(added) or None


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
    #: Live sessions by the provisioning key id that admitted them.
    _by_key: dict[str, set[Session]] = attrs.field(factory=dict)
    #: The trust state every live session was last checked against, and when that was in full.
    _checked: Mapping[str, TenantTrust] | None = None
    _full_pass_at: dt.datetime | None = None

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        key_id = session.decision.key_id
        if key_id is not None:
            self._by_key.setdefault(key_id, set()).add(session)
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
        key_id = session.decision.key_id
        if self._sessions.pop(session.id, None) is not None and key_id is not None:
            same_key = self._by_key.get(key_id)
            if same_key is not None:
                same_key.discard(session)
                if not same_key:
                    del self._by_key[key_id]
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

    def sessions_of_key(self, key_id: str) -> int:
        return len(self._by_key.get(key_id, ()))

    def reevaluate(self, tenants: Mapping[str, TenantTrust], now: dt.datetime) -> list[Session]:
        """Close every session the new trust state no longer admits; return them. Asks only the
        sessions of newly revoked keys when that is all that changed (module docstring)."""
        keys = key_delta(self._checked, tenants)
        self._checked = tenants
        candidates: list[Session]
        if keys is not None and self._full_pass_at is not None \
                and now - self._full_pass_at < FULL_PASS_INTERVAL:
            candidates = [s for key_id in keys for s in self._by_key.get(key_id, ())]
        else:
            candidates = list(self._sessions.values())
            self._full_pass_at = now
        evicted = []
        for session in candidates:
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
