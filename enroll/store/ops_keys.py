"""Store operations on provisioning keys, the provisioning toggle, issuers and the trust view
(SQL shared by both engines; see ``enroll.store.base`` for what each promises)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from enroll import keys, pki, secrets
from enroll.audit import Action
from enroll.errors import KeyLimitReached, KeyNameTaken, NoIssuer, UnknownKey, WrongKeyState
from enroll.issuers import IssuerRecord
from enroll.keys import KeyAction, KeyRecord, KeyState
from enroll.store.records import IssuerFactory, IssuerListing, TenantTrustInputs, TrustInputs
from enroll.store.sql import SqlStore, Tx

KEY_COLUMNS = ("id, tenant, name, state, created_at, updated_at, last_used_at, "
               "certificates_issued, profile, state_reason")
ISSUER_COLUMNS = ("id, tenant, seq, cert_pem, key_path, sha256, not_before, not_after, "
                  "created_at, retired_at")
_AUDIT_ACTIONS = {KeyAction.SUSPEND: Action.KEY_SUSPENDED,
                  KeyAction.REACTIVATE: Action.KEY_REACTIVATED,
                  KeyAction.REVOKE: Action.KEY_REVOKED}


def key_record(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(
        id=row[0], tenant=row[1], name=row[2], state=KeyState(row[3]), created_at=row[4],
        updated_at=row[5], last_used_at=row[6], certificates_issued=row[7], profile=row[8],
        state_reason=row[9],
    )


def issuer_record(row: Sequence[Any]) -> IssuerRecord:
    return IssuerRecord(*row)


def _find_key(tx: Tx, tenant: str, name_or_id: str) -> KeyRecord | None:
    row = tx.one(f"SELECT {KEY_COLUMNS} FROM provisioning_keys WHERE tenant = ?"
                 " AND (name = ? OR id = ?)", (tenant, name_or_id, name_or_id))
    return None if row is None else key_record(row)


def _need_key(tx: Tx, tenant: str, name_or_id: str) -> KeyRecord:
    record = _find_key(tx, tenant, name_or_id)
    if record is None:
        raise UnknownKey(f"tenant {tenant} has no provisioning key named {name_or_id!r}")
    return record


#: Read by every serving process on each change and each minute: through indexes, never a scan
#: of the certificates (schema version 6; tests/integration/test_store_indexes.py).
REVOKED_CERTIFICATES_SQL = "SELECT tenant, sha256 FROM certificates WHERE state = 'revoked'"
ISSUER_EXPIRY_SQL = ("SELECT i.id, (SELECT MAX(c.not_after) FROM certificates c"
                     " WHERE c.issuer_id = i.id) FROM issuers i WHERE i.tenant = ?")


def _listing(tx: Tx, tenant: str) -> IssuerListing:
    rows = tx.all(f"SELECT {ISSUER_COLUMNS} FROM issuers WHERE tenant = ? ORDER BY seq", (tenant,))
    # Per issuer, through the (issuer_id, not_after) index: a lookup each, not a scan of the
    # tenant's certificates (an issuer belongs to one tenant).
    expiry = tx.all(ISSUER_EXPIRY_SQL, (tenant,))
    return IssuerListing(tuple(issuer_record(r) for r in rows),
                         {i: int(n) for i, n in expiry if n is not None})


class KeyOps(SqlStore):
    # --- engine hooks --------------------------------------------------------------------------

    @abc.abstractmethod
    def _keep_issuer_key(self, tx: Tx, issuer_id: str, tenant: str, key: pki.PrivateKey
                         ) -> tuple[str, bytes | None]:
        """Keep a new issuer's private key before its row is written: the (key_path,
        key_sealed) columns that find it again."""

    # --- provisioning keys ---------------------------------------------------------------------

    def create_key(self, tenant: str, *, key_id: str, name: str, secret_hash: bytes,
                   profile: str | None, actor: str, ts: int) -> KeyRecord:
        def create(tx: Tx) -> KeyRecord:
            taken = tx.one("SELECT name, state FROM provisioning_keys WHERE tenant = ?"
                           " AND name_folded = ?", (tenant, keys.fold_name(name)))
            if taken:
                raise KeyNameTaken(
                    f"tenant {tenant} already has a key named {taken[0]!r} ({taken[1]}); "
                    "names are unique per tenant, whatever their case")
            live = int(tx.scalar("SELECT COUNT(*) FROM provisioning_keys WHERE tenant = ?"
                                 " AND state != 'revoked'", (tenant,)))
            if live >= keys.MAX_LIVE_KEYS:
                raise KeyLimitReached(
                    f"tenant {tenant} already has {live} active or suspended keys, the most "
                    f"allowed is {keys.MAX_LIVE_KEYS}: revoke one first")
            tx.execute(
                "INSERT INTO provisioning_keys (id, tenant, name, name_folded, state, secret_hash,"
                " profile, created_at, updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?)",
                (key_id, tenant, name, keys.fold_name(name), secret_hash, profile, ts, ts))
            tx.audit(ts=ts, actor=actor, tenant=tenant, action=Action.KEY_CREATED, target=key_id,
                     details={"name": name, "profile": profile})
            return _need_key(tx, tenant, key_id)
        return self._write(create, audited=True)

    def count_live_keys(self, tenant: str) -> int:
        return int(self._read(lambda tx: tx.scalar(
            "SELECT COUNT(*) FROM provisioning_keys WHERE tenant = ? AND state != 'revoked'",
            (tenant,))))

    def list_keys(self, tenant: str) -> list[KeyRecord]:
        rows = self._read(lambda tx: tx.all(
            f"SELECT {KEY_COLUMNS} FROM provisioning_keys WHERE tenant = ?"
            " ORDER BY insert_seq", (tenant,)))
        return [key_record(r) for r in rows]

    def keys_with_profiles(self) -> list[KeyRecord]:
        rows = self._read(lambda tx: tx.all(
            f"SELECT {KEY_COLUMNS} FROM provisioning_keys WHERE state != 'revoked'"
            " AND profile IS NOT NULL ORDER BY tenant, name"))
        return [key_record(r) for r in rows]

    def find_key(self, tenant: str, name_or_id: str) -> KeyRecord | None:
        return self._read(lambda tx: _find_key(tx, tenant, name_or_id))

    def key_for_authentication(self, tenant: str, key_id: str) -> tuple[bytes, KeyRecord] | None:
        row = self._read(lambda tx: tx.one(
            f"SELECT secret_hash, {KEY_COLUMNS} FROM provisioning_keys WHERE tenant = ?"
            " AND id = ?", (tenant, key_id)))
        return None if row is None else (bytes(row[0]), key_record(row[1:]))

    def rename_key(self, tenant: str, name_or_id: str, new_name: str, *, actor: str,
                   ts: int) -> KeyRecord:
        def rename(tx: Tx) -> KeyRecord:
            record = _need_key(tx, tenant, name_or_id)
            if record.state is KeyState.REVOKED:
                raise WrongKeyState(f"key {record.name!r} is revoked: a revoked key cannot be "
                                    "renamed")
            clash = tx.one("SELECT name FROM provisioning_keys WHERE tenant = ? AND"
                           " name_folded = ? AND id != ?",
                           (tenant, keys.fold_name(new_name), record.id))
            if clash:
                raise KeyNameTaken(f"tenant {tenant} already has a key named {clash[0]!r}")
            tx.execute("UPDATE provisioning_keys SET name = ?, name_folded = ?, updated_at = ?"
                       " WHERE id = ?", (new_name, keys.fold_name(new_name), ts, record.id))
            tx.audit(ts=ts, actor=actor, tenant=tenant, action=Action.KEY_RENAMED,
                     target=record.id, details={"old_name": record.name, "new_name": new_name})
            return _need_key(tx, tenant, record.id)
        return self._write(rename, audited=True)

    def transition_key(self, tenant: str, name_or_id: str, action: KeyAction, *,
                       reason: str | None, confirm: str | None, actor: str, ts: int) -> KeyRecord:
        def transition(tx: Tx) -> KeyRecord:
            record = _need_key(tx, tenant, name_or_id)
            new_state = keys.next_state(record.state, action)
            why = None if action is KeyAction.REACTIVATE else keys.require_reason(reason, action)
            if action is KeyAction.REVOKE:
                keys.check_revoke_confirmation(record.name, confirm)
            tx.execute("UPDATE provisioning_keys SET state = ?, state_reason = ?, updated_at = ?"
                       " WHERE id = ?", (new_state.value, why, ts, record.id))
            tx.audit(ts=ts, actor=actor, tenant=tenant, action=_AUDIT_ACTIONS[action],
                     target=record.id, reason=why,
                     details={"name": record.name, "from": record.state.value,
                              "to": new_state.value})
            tx.changed()
            return _need_key(tx, tenant, record.id)
        return self._write(transition, audited=True)

    # --- the provisioning service and issuers --------------------------------------------------

    def service_enabled(self, tenant: str) -> bool:
        return bool(self._read(lambda tx: tx.scalar(
            "SELECT provisioning_enabled FROM tenant_state WHERE tenant = ?", (tenant,))))

    def _insert_issuer(self, tx: Tx, tenant: str, ts: int, make_issuer: IssuerFactory
                       ) -> IssuerRecord:
        seq = int(tx.scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM issuers WHERE tenant = ?",
                            (tenant,)))
        issuer_id = f"iss_{tenant}_{seq}_{secrets.new_key_id()[3:11]}"
        cert, key = make_issuer(seq)
        key_path, sealed = self._keep_issuer_key(tx, issuer_id, tenant, key)
        record = IssuerRecord(
            id=issuer_id, tenant=tenant, seq=seq, cert_pem=pki.cert_pem(cert).decode(),
            key_path=key_path, sha256=pki.sha256_fingerprint(cert),
            not_before=_unix(cert.not_valid_before_utc), not_after=_unix(cert.not_valid_after_utc),
            created_at=ts, retired_at=None)
        tx.execute(f"INSERT INTO issuers ({ISSUER_COLUMNS}, key_sealed) VALUES"
                   " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (record.id, record.tenant, record.seq, record.cert_pem, record.key_path,
                    record.sha256, record.not_before, record.not_after, ts, None, sealed))
        return record

    def set_service(self, tenant: str, enabled: bool, *, actor: str, ts: int,
                    make_issuer: IssuerFactory) -> bool:
        def toggle(tx: Tx) -> bool:
            if bool(tx.scalar("SELECT provisioning_enabled FROM tenant_state WHERE tenant = ?",
                              (tenant,))) == enabled:
                return False
            if enabled and tx.one("SELECT 1 FROM issuers WHERE tenant = ?", (tenant,)) is None:
                issuer = self._insert_issuer(tx, tenant, ts, make_issuer)
                tx.audit(ts=ts, actor=actor, tenant=tenant, action=Action.ISSUER_CREATED,
                         target=issuer.id, details={"subject": issuer.subject,
                                                    "sha256": issuer.sha256,
                                                    "not_after": issuer.not_after})
            tx.execute("INSERT INTO tenant_state (tenant, provisioning_enabled, updated_at)"
                       " VALUES (?, ?, ?) ON CONFLICT (tenant) DO UPDATE SET"
                       " provisioning_enabled = excluded.provisioning_enabled,"
                       " updated_at = excluded.updated_at", (tenant, int(enabled), ts))
            tx.audit(ts=ts, actor=actor, tenant=tenant,
                     action=Action.SERVICE_ENABLED if enabled else Action.SERVICE_DISABLED)
            tx.changed()
            return True
        return self._write(toggle, audited=True)

    def renew_issuer(self, tenant: str, *, actor: str, ts: int,
                     make_issuer: IssuerFactory) -> IssuerRecord:
        def renew(tx: Tx) -> IssuerRecord:
            current = [r[0] for r in tx.all("SELECT id FROM issuers WHERE tenant = ? AND"
                                            " retired_at IS NULL ORDER BY seq", (tenant,))]
            if not current:
                raise NoIssuer(f"tenant {tenant} has no issuer yet: enable the provisioning "
                               "service first (switch service enable)")
            issuer = self._insert_issuer(tx, tenant, ts, make_issuer)
            tx.execute("UPDATE issuers SET retired_at = ? WHERE tenant = ? AND id != ?"
                       " AND retired_at IS NULL", (ts, tenant, issuer.id))
            tx.audit(ts=ts, actor=actor, tenant=tenant, action=Action.ISSUER_RENEWED,
                     target=issuer.id, details={"subject": issuer.subject, "sha256": issuer.sha256,
                                                "not_after": issuer.not_after, "retired": current})
            tx.changed()
            return issuer
        return self._write(renew, audited=True)

    def list_issuers(self, tenant: str) -> IssuerListing:
        return self._read(lambda tx: _listing(tx, tenant), snapshot=True)

    def current_issuer(self, tenant: str) -> IssuerRecord | None:
        row = self._read(lambda tx: tx.one(
            f"SELECT {ISSUER_COLUMNS} FROM issuers WHERE tenant = ? AND retired_at IS NULL"
            " ORDER BY seq DESC LIMIT 1", (tenant,)))
        return None if row is None else issuer_record(row)

    def trust_inputs(self, tenants: Sequence[str]) -> TrustInputs:
        def read(tx: Tx) -> TrustInputs:
            generation = int(tx.scalar("SELECT generation FROM changes"))
            revoked_keys: dict[str, set[str]] = {}
            for tenant, key_id in tx.all("SELECT tenant, id FROM provisioning_keys"
                                         " WHERE state = 'revoked'"):
                revoked_keys.setdefault(tenant, set()).add(key_id)
            revoked_certs: dict[str, set[str]] = {}
            for tenant, sha in tx.all(REVOKED_CERTIFICATES_SQL):
                revoked_certs.setdefault(tenant, set()).add(sha)
            enabled = {t for (t,) in tx.all("SELECT tenant FROM tenant_state"
                                            " WHERE provisioning_enabled != 0")}
            return TrustInputs(generation, {
                name: TenantTrustInputs(
                    name in enabled,
                    _listing(tx, name) if name in enabled else IssuerListing((), {}),
                    frozenset(revoked_keys.get(name, ())), frozenset(revoked_certs.get(name, ())))
                for name in tenants})
        return self._read(read, snapshot=True)


def _unix(when: Any) -> int:
    return int(when.timestamp())
