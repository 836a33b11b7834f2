"""Store operations on the console's sign-in sessions (SQL shared by both engines; see
``enroll.store.base``; what a session is and how it is checked is ``gateway.api.session``'s).

A session is a row under the SHA-256 of its id; it ends when it is signed out, when its operator
is removed or its password changes (``enroll.store.ops_audit`` deletes the operator's rows in
that same transaction), or when it expires (idle or absolute; the row is deleted by the next
lookup that finds it expired, or pruned by a later sign-in). Being in the store, a session works
on every process and host that shares it, and ends on all of them at once.
"""

from __future__ import annotations

from enroll.audit import Action
from enroll.errors import UnknownOperator
from enroll.operators import OperatorRecord
from enroll.store.ops_audit import OPERATOR_COLUMNS, _operator
from enroll.store.records import ConsoleSession
from enroll.store.sql import SqlStore, Tx

SESSION_COLUMNS = ("id_hash, operator, created_at, last_seen_at, idle_timeout, expires_at, "
                   "source")
#: Ended sessions forgotten by one sign-in, at most (they are forgotten a few at a time).
PRUNE_SESSIONS = 32
_JOINED = (", ".join(f"s.{c.strip()}" for c in SESSION_COLUMNS.split(",")) + ", "
           + ", ".join(f"o.{c.strip()}" for c in OPERATOR_COLUMNS.split(",")))


class SessionOps(SqlStore):
    def create_console_session(self, session: ConsoleSession, *, actor: str) -> None:
        """Keep a new session of an existing operator (``UnknownOperator`` otherwise), audited
        ``operator.signed_in``; sessions that ended (any operator's) are pruned, a few at a
        time."""
        def create(tx: Tx) -> None:
            if tx.scalar("SELECT name FROM operators WHERE name = ?", (session.operator,)) is None:
                raise UnknownOperator(f"no operator named {session.operator!r}")
            ts = session.created_at
            tx.execute("DELETE FROM console_sessions WHERE id_hash IN (SELECT id_hash FROM"
                       " console_sessions WHERE expires_at <= ? OR last_seen_at + idle_timeout"
                       f" <= ? LIMIT {PRUNE_SESSIONS})", (ts, ts))
            tx.execute(f"INSERT INTO console_sessions ({SESSION_COLUMNS}) VALUES"
                       " (?, ?, ?, ?, ?, ?, ?)",
                       (session.id_hash, session.operator, ts, session.last_seen_at,
                        session.idle_timeout, session.expires_at, session.source))
            tx.audit(ts=ts, actor=actor, tenant=None, action=Action.OPERATOR_SIGNED_IN,
                     target=session.operator, details={"source": session.source})
        self._write(create, audited=True)

    def console_session(self, id_hash: str) -> tuple[ConsoleSession, OperatorRecord] | None:
        """The session with this hash and its operator as the store holds it now; None when
        there is no such session (never signed in, signed out, ended by a change of its
        operator). Expiry is the caller's to judge (``ConsoleSession.expired``)."""
        row = self._read(lambda tx: tx.one(
            f"SELECT {_JOINED} FROM console_sessions s JOIN operators o ON o.name = s.operator"
            " WHERE s.id_hash = ?", (id_hash,)))
        if row is None:
            return None
        width = len(SESSION_COLUMNS.split(","))
        return ConsoleSession(*row[:width]), _operator(row[width:])

    def touch_console_session(self, id_hash: str, ts: int) -> None:
        """The session was used at ``ts`` (its idle time starts again)."""
        self._write(lambda tx: tx.execute(
            "UPDATE console_sessions SET last_seen_at = ? WHERE id_hash = ? AND last_seen_at < ?",
            (ts, id_hash, ts)))

    def end_console_session(self, id_hash: str, *, actor: str | None, ts: int) -> bool:
        """Forget the session; with ``actor`` (a sign-out), audited ``operator.signed_out``.
        False when there was none."""
        def end(tx: Tx) -> bool:
            operator = tx.scalar("SELECT operator FROM console_sessions WHERE id_hash = ?",
                                 (id_hash,))
            if operator is None:
                return False
            tx.execute("DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))
            if actor is not None:
                tx.audit(ts=ts, actor=actor, tenant=None, action=Action.OPERATOR_SIGNED_OUT,
                         target=str(operator))
            return True
        return self._write(end, audited=actor is not None)

    def count_console_sessions(self, operator: str) -> int:
        """The operator's sessions the store holds (expired ones not yet forgotten included)."""
        return int(self._read(lambda tx: tx.scalar(
            "SELECT COUNT(*) FROM console_sessions WHERE operator = ?", (operator,))))
