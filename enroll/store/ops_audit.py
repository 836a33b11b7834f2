"""Store operations on the audit log (reading it, and the input of its verification) and on
operators (SQL shared by both engines; see ``enroll.store.base``)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from enroll import audit
from enroll.audit import Action, AuditEntry
from enroll.errors import OperatorNameTaken, UnknownOperator
from enroll.operators import OperatorRecord
from enroll.store.records import AuditPage, AuditQuery
from enroll.store.sql import SqlStore, Tx

AUDIT_COLUMNS = "seq, ts, actor, tenant, action, target, reason, details, prev_hash, hash"
OPERATOR_COLUMNS = ("name, role, tenants, token_id, token_hash, password_hash, created_at, "
                    "updated_at")


def _operator(row: Any) -> OperatorRecord:
    name, role, tenants, token_id, token_hash, password_hash, created_at, updated_at = row
    return OperatorRecord(name, role, None if tenants is None else tuple(json.loads(tenants)),
                          token_id, bytes(token_hash), password_hash, created_at, updated_at)


def _tenants_column(tenants: tuple[str, ...] | None) -> str | None:
    return None if tenants is None else json.dumps(list(tenants))


def _get_operator(tx: Tx, name: str) -> OperatorRecord:
    row = tx.one(f"SELECT {OPERATOR_COLUMNS} FROM operators WHERE name = ?", (name,))
    if row is None:
        raise UnknownOperator(f"no operator named {name!r}")
    return _operator(row)


class AuditOps(SqlStore):
    # --- audit ---------------------------------------------------------------------------------

    def append_audit(self, *, actor: str, tenant: str | None, action: str, ts: int,
                     target: str | None = None, reason: str | None = None,
                     details: Mapping[str, Any] | None = None) -> AuditEntry:
        return self._write(lambda tx: tx.audit(ts=ts, actor=actor, tenant=tenant, action=action,
                                               target=target, reason=reason, details=details),
                           audited=True)

    def audit_page(self, query: AuditQuery) -> AuditPage:
        clauses: list[str] = []
        args: list[object] = []
        for column, value, test in (("tenant", query.tenant, "="), ("actor", query.actor, "="),
                                    ("action", query.action, "="), ("target", query.target, "="),
                                    ("ts", query.since, ">="),
                                    ("ts", query.until, "<="), ("seq", query.before_seq, "<")):
            if value is not None:
                clauses.append(f"{column} {test} ?")
                args.append(value)
        if query.tenants is not None:
            if not query.tenants:
                return AuditPage((), None)
            clauses.append(f"tenant IN ({', '.join('?' * len(query.tenants))})")
            args.extend(query.tenants)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = ""
        if query.limit is not None:
            limit = " LIMIT ?"
            args.append(query.limit + 1)  # one more: is there a next page?
        rows = self._read(lambda tx: tx.all(
            f"SELECT {AUDIT_COLUMNS} FROM audit_log{where} ORDER BY seq DESC{limit}", args))
        entries = tuple(audit.entry_from_row(tuple(r)) for r in rows[:query.limit])
        more = query.limit is not None and len(rows) > query.limit
        return AuditPage(entries, entries[-1].seq if more and entries else None)

    def audit_chain(self) -> tuple[Iterator[AuditEntry], tuple[int, str] | None]:
        def read(tx: Tx) -> tuple[list[Any], Any]:
            # seq is the entry's position in the chain: the order is the chain's order.
            rows = tx.all(f"SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq")
            return rows, tx.one("SELECT last_seq, last_hash FROM audit_head")
        rows, head = self._read(read, snapshot=True)
        entries = (audit.entry_from_row(tuple(r)) for r in rows)
        return entries, None if head is None else (int(head[0]), str(head[1]))

    # --- operators -----------------------------------------------------------------------------

    def create_operator(self, name: str, *, role: str, tenants: tuple[str, ...] | None,
                        token_id: str, token_hash: bytes, password_hash: str | None,
                        actor: str, ts: int) -> OperatorRecord:
        def create(tx: Tx) -> OperatorRecord:
            taken = tx.scalar("SELECT name FROM operators WHERE name_folded = ?",
                              (name.casefold(),))
            if taken is not None:
                raise OperatorNameTaken(f"there is already an operator named {taken!r}; names "
                                        "are unique whatever their case")
            tx.execute(f"INSERT INTO operators ({OPERATOR_COLUMNS}, name_folded) VALUES"
                       " (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (name, role, _tenants_column(tenants), token_id, token_hash, password_hash,
                        ts, ts, name.casefold()))
            tx.audit(ts=ts, actor=actor, tenant=None, action=Action.OPERATOR_CREATED, target=name,
                     details={"role": role, "tenants": list(tenants) if tenants else None,
                              "token_id": token_id, "password": password_hash is not None})
            return _get_operator(tx, name)
        return self._write(create, audited=True)

    def get_operator(self, name: str) -> OperatorRecord | None:
        row = self._read(lambda tx: tx.one(
            f"SELECT {OPERATOR_COLUMNS} FROM operators WHERE name = ?", (name,)))
        return None if row is None else _operator(row)

    def operator_by_token_id(self, token_id: str) -> OperatorRecord | None:
        row = self._read(lambda tx: tx.one(
            f"SELECT {OPERATOR_COLUMNS} FROM operators WHERE token_id = ?", (token_id,)))
        return None if row is None else _operator(row)

    def list_operators(self) -> list[OperatorRecord]:
        rows = self._read(lambda tx: tx.all(
            f"SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY name"))
        return [_operator(r) for r in rows]

    def _change_operator(self, name: str, assignments: str, args: tuple[object, ...], *,
                         action: str, details: Mapping[str, Any], actor: str, ts: int,
                         end_sessions: bool = False) -> OperatorRecord:
        def change(tx: Tx) -> OperatorRecord:
            _get_operator(tx, name)
            tx.execute(f"UPDATE operators SET {assignments}, updated_at = ? WHERE name = ?",
                       (*args, ts, name))
            if end_sessions:
                tx.execute("DELETE FROM console_sessions WHERE operator = ?", (name,))
            tx.audit(ts=ts, actor=actor, tenant=None, action=action, target=name,
                     details=details)
            return _get_operator(tx, name)
        return self._write(change, audited=True)

    def set_operator_role(self, name: str, role: str, *, actor: str, ts: int) -> OperatorRecord:
        return self._change_operator(name, "role = ?", (role,), action=Action.OPERATOR_ROLE_SET,
                                     details={"role": role}, actor=actor, ts=ts)

    def set_operator_tenants(self, name: str, tenants: tuple[str, ...] | None, *, actor: str,
                             ts: int) -> OperatorRecord:
        return self._change_operator(name, "tenants = ?", (_tenants_column(tenants),),
                                     action=Action.OPERATOR_TENANTS_SET,
                                     details={"tenants": list(tenants) if tenants else None},
                                     actor=actor, ts=ts)

    def replace_operator_token(self, name: str, *, token_id: str, token_hash: bytes, actor: str,
                               ts: int) -> OperatorRecord:
        return self._change_operator(name, "token_id = ?, token_hash = ?", (token_id, token_hash),
                                     action=Action.OPERATOR_TOKEN_REPLACED,
                                     details={"token_id": token_id}, actor=actor, ts=ts)

    def set_operator_password(self, name: str, password_hash: str | None, *, actor: str,
                              ts: int) -> OperatorRecord:
        # A new (or no) password ends every console session signed in with the old one.
        return self._change_operator(name, "password_hash = ?", (password_hash,),
                                     action=Action.OPERATOR_PASSWORD_SET,
                                     details={"password": password_hash is not None},
                                     actor=actor, ts=ts, end_sessions=True)

    def remove_operator(self, name: str, *, actor: str, ts: int) -> None:
        def remove(tx: Tx) -> None:
            record = _get_operator(tx, name)
            tx.execute("DELETE FROM operators WHERE name = ?", (name,))
            tx.execute("DELETE FROM console_sessions WHERE operator = ?", (name,))
            tx.audit(ts=ts, actor=actor, tenant=None, action=Action.OPERATOR_REMOVED, target=name,
                     details={"role": record.role, "token_id": record.token_id})
        self._write(remove, audited=True)
