"""The authority: the operations security admins run, each validated and audited.

Every method that changes something validates first (pure rules from ``enroll.keys``), then makes
its change and its audit entry in one store transaction, so either both happen or neither does.
Tenants are the ones in config; anything else is ``UnknownTenant`` (fail closed). Methods are
synchronous: the CLI calls them directly, the server through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from config.model import SwitchConfig
from enroll import audit, issuers, keys, pki, secrets
from enroll.audit import Action, AuditEntry, AuditVerification
from enroll.errors import (
    KeyLimitReached,
    KeyNameTaken,
    NoIssuer,
    StoreError,
    UnknownKey,
    UnknownProfile,
    UnknownTenant,
    WrongKeyState,
)
from enroll.issuers import IssuerRecord
from enroll.keys import KeyAction, KeyRecord, KeyState
from enroll.store import Store, bump_generation

Clock = Callable[[], dt.datetime]

_KEY_COLUMNS = (
    "id, tenant, name, state, created_at, updated_at, last_used_at, certificates_issued, "
    "profile, state_reason"
)
_ISSUER_COLUMNS = (
    "id, tenant, seq, cert_pem, key_path, sha256, not_before, not_after, created_at, retired_at"
)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(when: dt.datetime) -> int:
    return int(when.timestamp())


def _key(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(
        id=row[0], tenant=row[1], name=row[2], state=KeyState(row[3]), created_at=row[4],
        updated_at=row[5], last_used_at=row[6], certificates_issued=row[7], profile=row[8],
        state_reason=row[9],
    )


class Authority:
    def __init__(self, config: SwitchConfig, store: Store, clock: Clock = _utcnow) -> None:
        self.config = config
        self.store = store
        self.clock = clock

    @classmethod
    def open(cls, config: SwitchConfig, clock: Clock = _utcnow) -> Authority:
        """Open the store in ``state_dir``, owner-only whatever the umask: the directory 0700,
        ``switch.db`` and SQLite's ``-wal`` and ``-shm`` files 0600."""
        path = config.state_dir / "switch.db"
        _owner_only_store(path)
        store = Store.open(path)
        _owner_only_store(path)  # -wal and -shm made by an older Switch under a looser umask
        return cls(config, store, clock)

    def close(self) -> None:
        self.store.close()

    # --- helpers -------------------------------------------------------------------------------

    def _tenant(self, tenant: str) -> str:
        if tenant not in self.config.tenants:
            known = ", ".join(sorted(self.config.tenants)) or "none"
            raise UnknownTenant(f"no tenant {tenant!r} in the configuration (known: {known})")
        return tenant

    def _now(self, now: dt.datetime | None) -> int:
        return _ts(now or self.clock())

    def _find_key(self, conn: sqlite3.Connection, tenant: str, name_or_id: str) -> KeyRecord:
        row = conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM provisioning_keys WHERE tenant = ? AND (name = ? OR id = ?)",
            (tenant, name_or_id, name_or_id),
        ).fetchone()
        if row is None:
            raise UnknownKey(f"tenant {tenant} has no provisioning key named {name_or_id!r}")
        return _key(row)

    # --- provisioning keys ---------------------------------------------------------------------

    def generate_key(
        self, tenant: str, name: str, *, actor: str, profile: str | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create an active key. The secret is returned here and never again; only its hash is
        stored. Refused: bad name, name taken (any case, revoked keys included), three live keys
        already, unknown profile."""
        self._tenant(tenant)
        keys.validate_key_name(name)
        if profile is not None and profile not in self.config.profiles:
            known = ", ".join(sorted(self.config.profiles)) or "none"
            raise UnknownProfile(f"no profile {profile!r} in the configuration (known: {known})")
        key_id = secrets.new_key_id()
        secret = secrets.new_key_secret(key_id)
        ts = self._now(now)
        with self.store.transaction() as conn:
            taken = conn.execute(
                "SELECT name, state FROM provisioning_keys WHERE tenant = ? AND name_folded = ?",
                (tenant, keys.fold_name(name)),
            ).fetchone()
            if taken:
                raise KeyNameTaken(
                    f"tenant {tenant} already has a key named {taken[0]!r} ({taken[1]}); "
                    "names are unique per tenant, whatever their case"
                )
            live = conn.execute(
                "SELECT COUNT(*) FROM provisioning_keys WHERE tenant = ? AND state != 'revoked'",
                (tenant,),
            ).fetchone()[0]
            if live >= keys.MAX_LIVE_KEYS:
                raise KeyLimitReached(
                    f"tenant {tenant} already has {live} active or suspended keys, the most "
                    f"allowed is {keys.MAX_LIVE_KEYS}: revoke one first"
                )
            conn.execute(
                "INSERT INTO provisioning_keys (id, tenant, name, name_folded, state, secret_hash,"
                " profile, created_at, updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?)",
                (key_id, tenant, name, keys.fold_name(name), secrets.hash_secret(secret), profile,
                 ts, ts),
            )
            audit.append(conn, ts=ts, actor=actor, tenant=tenant, action=Action.KEY_CREATED,
                         target=key_id, details={"name": name, "profile": profile})
            record = self._find_key(conn, tenant, key_id)
        return record, secret

    def list_keys(self, tenant: str) -> list[KeyRecord]:
        self._tenant(tenant)
        rows = self.store.conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM provisioning_keys WHERE tenant = ? ORDER BY created_at, id",
            (tenant,),
        ).fetchall()
        return [_key(r) for r in rows]

    def get_key(self, tenant: str, name_or_id: str) -> KeyRecord:
        self._tenant(tenant)
        return self._find_key(self.store.conn, tenant, name_or_id)

    def rename_key(
        self, tenant: str, name: str, new_name: str, *, actor: str, now: dt.datetime | None = None
    ) -> KeyRecord:
        self._tenant(tenant)
        keys.validate_key_name(new_name)
        ts = self._now(now)
        with self.store.transaction() as conn:
            record = self._find_key(conn, tenant, name)
            if record.state is KeyState.REVOKED:
                raise WrongKeyState(f"key {record.name!r} is revoked: a revoked key cannot be renamed")
            clash = conn.execute(
                "SELECT name FROM provisioning_keys WHERE tenant = ? AND name_folded = ? AND id != ?",
                (tenant, keys.fold_name(new_name), record.id),
            ).fetchone()
            if clash:
                raise KeyNameTaken(f"tenant {tenant} already has a key named {clash[0]!r}")
            conn.execute(
                "UPDATE provisioning_keys SET name = ?, name_folded = ?, updated_at = ? WHERE id = ?",
                (new_name, keys.fold_name(new_name), ts, record.id),
            )
            audit.append(conn, ts=ts, actor=actor, tenant=tenant, action=Action.KEY_RENAMED,
                         target=record.id, details={"old_name": record.name, "new_name": new_name})
            return self._find_key(conn, tenant, record.id)

    def _transition(
        self, tenant: str, name: str, key_action: KeyAction, audit_action: str, *, actor: str,
        reason: str | None, now: dt.datetime | None, confirm: str | None = None,
    ) -> KeyRecord:
        self._tenant(tenant)
        ts = self._now(now)
        with self.store.transaction() as conn:
            record = self._find_key(conn, tenant, name)
            new_state = keys.next_state(record.state, key_action)
            if key_action is not KeyAction.REACTIVATE:
                reason = keys.require_reason(reason, key_action)
            if key_action is KeyAction.REVOKE:
                keys.check_revoke_confirmation(record.name, confirm)
            conn.execute(
                "UPDATE provisioning_keys SET state = ?, state_reason = ?, updated_at = ? WHERE id = ?",
                (new_state.value, reason, ts, record.id),
            )
            audit.append(conn, ts=ts, actor=actor, tenant=tenant, action=audit_action,
                         target=record.id, reason=reason,
                         details={"name": record.name, "from": record.state.value,
                                  "to": new_state.value})
            bump_generation(conn)
            return self._find_key(conn, tenant, record.id)

    def suspend_key(self, tenant: str, name: str, *, reason: str | None, actor: str,
                    now: dt.datetime | None = None) -> KeyRecord:
        """No new certificates (enrollment and renewal); existing certificates still connect."""
        return self._transition(tenant, name, KeyAction.SUSPEND, Action.KEY_SUSPENDED,
                                actor=actor, reason=reason, now=now)

    def reactivate_key(self, tenant: str, name: str, *, actor: str,
                       now: dt.datetime | None = None) -> KeyRecord:
        return self._transition(tenant, name, KeyAction.REACTIVATE, Action.KEY_REACTIVATED,
                                actor=actor, reason=None, now=now)

    def revoke_key(self, tenant: str, name: str, *, reason: str | None, confirm: str | None,
                   actor: str, now: dt.datetime | None = None) -> KeyRecord:
        """Permanent: the key issues nothing more and its certificates stop connecting."""
        return self._transition(tenant, name, KeyAction.REVOKE, Action.KEY_REVOKED, actor=actor,
                                reason=reason, now=now, confirm=confirm)

    def authenticate_key(self, tenant: str, secret: str, *, now: dt.datetime | None = None
                         ) -> KeyRecord | None:
        """The key a presented secret belongs to (whatever its state: the caller decides), or
        None. The hash comparison is constant-time and an unknown id costs the same work.

        A read, never a write: a key's ``last_used_at`` is set by what it was used for (the
        certificate issued or the request filed, ``Issuance``), in that same transaction, so an
        enrollment costs one commit and a refused request changes nothing. ``now`` is accepted
        for callers that pass it and unused."""
        del now
        self._tenant(tenant)
        key_id = secrets.parse_key_id(secret)
        row = None
        if key_id is not None:
            row = self.store.conn.execute(
                f"SELECT secret_hash, {_KEY_COLUMNS} FROM provisioning_keys"
                " WHERE tenant = ? AND id = ?", (tenant, key_id),
            ).fetchone()
        if not secrets.secret_matches(secret, bytes(row[0]) if row else None) or row is None:
            return None
        return _key(row[1:])

    # --- the provisioning service and issuers --------------------------------------------------

    def service_enabled(self, tenant: str) -> bool:
        self._tenant(tenant)
        row = self.store.conn.execute(
            "SELECT provisioning_enabled FROM tenant_state WHERE tenant = ?", (tenant,)
        ).fetchone()
        return bool(row and row[0])

    def enable_service(self, tenant: str, *, actor: str, now: dt.datetime | None = None) -> None:
        """Turn provisioning on; the first time, create the tenant's issuer. A no-op (and no
        audit entry) when already on."""
        self._tenant(tenant)
        when = now or self.clock()
        ts = _ts(when)
        with self.store.transaction() as conn:
            row = conn.execute("SELECT provisioning_enabled FROM tenant_state WHERE tenant = ?",
                               (tenant,)).fetchone()
            if row and row[0]:
                return
            has_issuer = conn.execute("SELECT 1 FROM issuers WHERE tenant = ? LIMIT 1",
                                      (tenant,)).fetchone()
            if not has_issuer:
                issuer = self._insert_issuer(conn, tenant, when)
                audit.append(conn, ts=ts, actor=actor, tenant=tenant,
                             action=Action.ISSUER_CREATED, target=issuer.id,
                             details={"subject": issuer.subject, "sha256": issuer.sha256,
                                      "not_after": issuer.not_after})
            conn.execute(
                "INSERT INTO tenant_state (tenant, provisioning_enabled, updated_at) VALUES (?, 1, ?)"
                " ON CONFLICT (tenant) DO UPDATE SET provisioning_enabled = 1, updated_at = ?",
                (tenant, ts, ts),
            )
            audit.append(conn, ts=ts, actor=actor, tenant=tenant, action=Action.SERVICE_ENABLED)
            bump_generation(conn)

    def disable_service(self, tenant: str, *, actor: str, now: dt.datetime | None = None) -> None:
        """Stops enrollment and trust in the provisioning CA. A no-op when already off."""
        self._tenant(tenant)
        ts = self._now(now)
        with self.store.transaction() as conn:
            row = conn.execute("SELECT provisioning_enabled FROM tenant_state WHERE tenant = ?",
                               (tenant,)).fetchone()
            if not (row and row[0]):
                return
            conn.execute("UPDATE tenant_state SET provisioning_enabled = 0, updated_at = ?"
                         " WHERE tenant = ?", (ts, tenant))
            audit.append(conn, ts=ts, actor=actor, tenant=tenant, action=Action.SERVICE_DISABLED)
            bump_generation(conn)

    def _insert_issuer(self, conn: sqlite3.Connection, tenant: str, when: dt.datetime
                       ) -> IssuerRecord:
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM issuers WHERE tenant = ?",
                           (tenant,)).fetchone()[0]
        issuer_id = f"iss_{tenant}_{seq}_{secrets.new_key_id()[3:11]}"
        key_path = self.config.state_dir / "issuers" / tenant / f"{issuer_id}.key"
        cert, _ = issuers.create_issuer_material(
            tenant, seq, key_type=self.config.issuer_key_type,
            validity_s=self.config.issuer_validity_s, now=when, key_path=key_path,
        )
        ts = _ts(when)
        record = IssuerRecord(
            id=issuer_id, tenant=tenant, seq=seq, cert_pem=pki.cert_pem(cert).decode(),
            key_path=str(key_path), sha256=pki.sha256_fingerprint(cert),
            not_before=_ts(cert.not_valid_before_utc), not_after=_ts(cert.not_valid_after_utc),
            created_at=ts, retired_at=None,
        )
        conn.execute(
            f"INSERT INTO issuers ({_ISSUER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.id, record.tenant, record.seq, record.cert_pem, record.key_path,
             record.sha256, record.not_before, record.not_after, record.created_at, None),
        )
        return record

    def renew_issuer(self, tenant: str, *, actor: str, now: dt.datetime | None = None
                     ) -> IssuerRecord:
        """Add a new current issuer and retire the previous one (it stays trusted while what it
        issued is unexpired)."""
        self._tenant(tenant)
        when = now or self.clock()
        ts = _ts(when)
        with self.store.transaction() as conn:
            current = conn.execute(
                "SELECT id FROM issuers WHERE tenant = ? AND retired_at IS NULL", (tenant,)
            ).fetchall()
            if not current:
                raise NoIssuer(f"tenant {tenant} has no issuer yet: enable the provisioning "
                               "service first (switch service enable)")
            issuer = self._insert_issuer(conn, tenant, when)
            conn.execute("UPDATE issuers SET retired_at = ? WHERE tenant = ? AND id != ?"
                          " AND retired_at IS NULL", (ts, tenant, issuer.id))
            audit.append(conn, ts=ts, actor=actor, tenant=tenant, action=Action.ISSUER_RENEWED,
                         target=issuer.id,
                         details={"subject": issuer.subject, "sha256": issuer.sha256,
                                  "not_after": issuer.not_after,
                                  "retired": [r[0] for r in current]})
            bump_generation(conn)
        return issuer

    def list_issuers(self, tenant: str, *, now: dt.datetime | None = None) -> list[IssuerRecord]:
        """The tenant's issuers, oldest first, each marked trusted or not at ``now``."""
        self._tenant(tenant)
        rows = self.store.conn.execute(
            f"SELECT {_ISSUER_COLUMNS} FROM issuers WHERE tenant = ? ORDER BY seq", (tenant,)
        ).fetchall()
        records = [IssuerRecord(*row) for row in rows]
        expiry = dict(self.store.conn.execute(
            "SELECT issuer_id, MAX(not_after) FROM certificates WHERE tenant = ? GROUP BY issuer_id",
            (tenant,),
        ).fetchall())
        trusted = issuers.trusted_issuer_ids(records, expiry, self._now(now))
        return [r if r.id not in trusted else _with_trusted(r) for r in records]

    def current_issuer(self, tenant: str) -> IssuerRecord:
        self._tenant(tenant)
        row = self.store.conn.execute(
            f"SELECT {_ISSUER_COLUMNS} FROM issuers WHERE tenant = ? AND retired_at IS NULL"
            " ORDER BY seq DESC LIMIT 1", (tenant,),
        ).fetchone()
        if row is None:
            raise NoIssuer(f"tenant {tenant} has no issuer: enable the provisioning service")
        return IssuerRecord(*row)

    # --- audit ---------------------------------------------------------------------------------

    def audit_entries(self, tenant: str | None = None) -> list[AuditEntry]:
        columns = "seq, ts, actor, tenant, action, target, reason, details, prev_hash, hash"
        if tenant is None:
            rows = self.store.conn.execute(f"SELECT {columns} FROM audit_log ORDER BY seq")
        else:
            self._tenant(tenant)
            rows = self.store.conn.execute(
                f"SELECT {columns} FROM audit_log WHERE tenant = ? ORDER BY seq", (tenant,))
        return [audit.entry_from_row(tuple(r)) for r in rows.fetchall()]

    def verify_audit(self) -> AuditVerification:
        columns = "seq, ts, actor, tenant, action, target, reason, details, prev_hash, hash"
        # seq is the rowid: an entry's sequence number is its position in the log.
        rows = self.store.conn.execute(f"SELECT {columns} FROM audit_log ORDER BY seq")
        head = self.store.conn.execute("SELECT last_seq, last_hash FROM audit_head").fetchone()
        return audit.verify((audit.entry_from_row(tuple(r)) for r in rows),
                            (head[0], head[1]) if head else None)

    def generation(self) -> int:
        try:
            return self.store.generation()
        except Exception as exc:  # pragma: no cover - store failure
            raise StoreError(f"cannot read the store: {exc}") from exc


def _owner_only_store(path: Path) -> None:
    """Create the state directory (0700) and the database file (0600) if missing, and make the
    files SQLite keeps beside it 0600. SQLite creates ``-wal`` and ``-shm`` with the mode of the
    database file, so a database that is 0600 before SQLite first opens it keeps them private
    (``Store.open`` alone would make it under the umask, 0644, and chmod it only after the WAL
    files exist)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            file.chmod(0o600)


def _with_trusted(record: IssuerRecord) -> IssuerRecord:
    return attrs.evolve(record, trusted=True)
