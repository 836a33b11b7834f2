"""Operators' accounts: creating, changing and removing them (each audited by the store in its
transaction), and recognising one by its API token or console password.

The rules (names, roles, token and password forms, the hashes) are ``enroll.operators``'; this
module applies them over the store. Tokens are made here and returned once; only their SHA-256
reaches the store. Tenants must be tenants of the configuration (fail closed: a misspelt tenant
grants nothing silently, it is refused).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from enroll import operators
from enroll.authority import Authority
from enroll.errors import UnknownOperator
from enroll.operators import OperatorRecord


class OperatorAdmin:
    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.store = authority.store

    def _ts(self, now: dt.datetime | None) -> int:
        return int((now or self.authority.clock()).timestamp())

    def _tenants(self, tenants: Iterable[str] | None) -> tuple[str, ...] | None:
        return operators.validate_tenants(tenants, self.authority.config.tenants)

    def add(self, name: str, *, role: str, tenants: Iterable[str] | None, actor: str,
            now: dt.datetime | None = None) -> tuple[OperatorRecord, str]:
        """A new operator and its API token (returned this once; only its hash is kept)."""
        operators.validate_name(name)
        operators.validate_role(role)
        scope = self._tenants(tenants)
        token_id, token = operators.new_token()
        record = self.store.create_operator(
            name, role=role, tenants=scope, token_id=token_id,
            token_hash=operators.hash_token(token), password_hash=None, actor=actor,
            ts=self._ts(now))
        return record, token

    def list(self) -> list[OperatorRecord]:
        return self.store.list_operators()

    def get(self, name: str) -> OperatorRecord:
        record = self.store.get_operator(name)
        if record is None:
            raise UnknownOperator(f"no operator named {name!r}")
        return record

    def remove(self, name: str, *, actor: str, now: dt.datetime | None = None) -> None:
        """Its token and password stop working when this commits."""
        self.store.remove_operator(name, actor=actor, ts=self._ts(now))

    def set_role(self, name: str, role: str, *, actor: str, now: dt.datetime | None = None
                 ) -> OperatorRecord:
        operators.validate_role(role)
        return self.store.set_operator_role(name, role, actor=actor, ts=self._ts(now))

    def set_tenants(self, name: str, tenants: Iterable[str] | None, *, actor: str,
                    now: dt.datetime | None = None) -> OperatorRecord:
        """None: every tenant."""
        return self.store.set_operator_tenants(name, self._tenants(tenants), actor=actor,
                                               ts=self._ts(now))

    def reset_token(self, name: str, *, actor: str, now: dt.datetime | None = None
                    ) -> tuple[OperatorRecord, str]:
        """A new token (returned this once); the old one stops working when this commits."""
        token_id, token = operators.new_token()
        record = self.store.replace_operator_token(
            name, token_id=token_id, token_hash=operators.hash_token(token), actor=actor,
            ts=self._ts(now))
        return record, token

    def set_password(self, name: str, password: str | None, *, actor: str,
                     now: dt.datetime | None = None) -> OperatorRecord:
        """The console password (argon2id); None removes it."""
        hashed = None if password is None else operators.hash_password(password)
        return self.store.set_operator_password(name, hashed, actor=actor, ts=self._ts(now))

    # --- recognising an operator ---------------------------------------------------------------

    def by_token(self, token: str) -> OperatorRecord | None:
        """The operator whose API token this is, read from the store now (a removed operator or
        a replaced token is None at once), or None. Constant-time comparison; a malformed token
        or an unknown id does the same hashing work."""
        token_id = operators.parse_token_id(token)
        record = None if token_id is None else self.store.operator_by_token_id(token_id)
        if not operators.token_matches(token, record.token_hash if record else None):
            return None
        return record

    def by_password(self, name: str, password: str) -> OperatorRecord | None:
        """The operator ``name`` if ``password`` is its console password, else None (the same
        argon2id work whether or not the operator exists or has a password)."""
        record = self.store.get_operator(name)
        if not operators.password_matches(password, record.password_hash if record else None):
            return None
        return record
