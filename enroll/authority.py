"""The authority: the operations security admins run, each validated and audited.

Every method that changes something validates first (pure rules from ``enroll.keys``), then makes
its change and its audit entry in one store transaction, so either both happen or neither does.
Tenants are the ones in config; anything else is ``UnknownTenant`` (fail closed). Methods are
synchronous: the CLI calls them directly, the server through ``trio.to_thread``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import attrs
import structlog

from config.check import ProfileUse, missing_profiles
from config.errors import Problem
from config.model import SwitchConfig
from enroll import audit, issuers, keys, secrets
from enroll.audit import AuditEntry, AuditVerification
from enroll.errors import NoIssuer, StoreError, UnknownKey, UnknownProfile, UnknownTenant
from enroll.issuers import IssuerRecord
from enroll.keys import KeyAction, KeyRecord
from enroll.store import AuditPage, AuditQuery, Store, open_store

Clock = Callable[[], dt.datetime]
log = structlog.get_logger("switch.authority")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(when: dt.datetime) -> int:
    return int(when.timestamp())


def stored_key_profile_problems(config: SwitchConfig) -> list[Problem]:
    """``Authority.key_profile_problems`` on a store opened for the purpose and closed again
    (``StoreError`` when it cannot be read)."""
    authority = Authority.open(config)
    try:
        return authority.key_profile_problems()
    finally:
        authority.close()


class Authority:
    def __init__(self, config: SwitchConfig, store: Store, clock: Clock = _utcnow) -> None:
        self.config = config
        self.store = store
        self.clock = clock

    @classmethod
    def open(cls, config: SwitchConfig, clock: Clock = _utcnow, *, create: bool = False
             ) -> Authority:
        """Open the store ``config`` names (``enroll.store.open_store``; ``create`` makes one
        where there is none, for a deployment not yet initialised)."""
        return cls(config, open_store(config, create=create), clock)

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

    def _make_issuer(self, tenant: str, when: dt.datetime) -> Callable[[int], issuers.Material]:
        def make(seq: int) -> issuers.Material:
            return issuers.make_issuer(tenant, seq, key_type=self.config.issuer_key_type,
                                       validity_s=self.config.issuer_validity_s, now=when)
        return make

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
        record = self.store.create_key(tenant, key_id=key_id, name=name,
                                       secret_hash=secrets.hash_secret(secret), profile=profile,
                                       actor=actor, ts=self._now(now))
        return record, secret

    def key_profile_problems(self, config: SwitchConfig | None = None) -> list[Problem]:
        """The live keys that name a profile ``config`` (default: this authority's) does not
        define, as configuration errors (``config.check.missing_profiles``)."""
        uses = [ProfileUse(k.tenant, k.name, k.id, k.profile)
                for k in self.store.keys_with_profiles() if k.profile is not None]
        return missing_profiles(config or self.config, uses)

    def checked_key_profiles(self, config: SwitchConfig) -> list[Problem]:
        """``key_profile_problems`` for a server: when the store cannot be read, none (logged
        ``key_profiles_unchecked``): enrollment waits for the store anyway, and a key whose
        profile is missing is refused with ``unknown_profile``, never a crash."""
        try:
            return self.key_profile_problems(config)
        except StoreError as exc:
            log.warning("key_profiles_unchecked", error=exc.message,
                        detail="the store could not be read: the profiles keys name were not "
                               "checked against the configuration")
            return []

    def list_keys(self, tenant: str) -> list[KeyRecord]:
        return self.store.list_keys(self._tenant(tenant))

    def get_key(self, tenant: str, name_or_id: str) -> KeyRecord:
        record = self.store.find_key(self._tenant(tenant), name_or_id)
        if record is None:
            raise UnknownKey(f"tenant {tenant} has no provisioning key named {name_or_id!r}")
        return record

    def rename_key(
        self, tenant: str, name: str, new_name: str, *, actor: str, now: dt.datetime | None = None
    ) -> KeyRecord:
        self._tenant(tenant)
        keys.validate_key_name(new_name)
        return self.store.rename_key(tenant, name, new_name, actor=actor, ts=self._now(now))

    def _transition(self, tenant: str, name: str, action: KeyAction, *, actor: str,
                    reason: str | None, now: dt.datetime | None, confirm: str | None = None
                    ) -> KeyRecord:
        self._tenant(tenant)
        return self.store.transition_key(tenant, name, action, reason=reason, confirm=confirm,
                                         actor=actor, ts=self._now(now))

    def suspend_key(self, tenant: str, name: str, *, reason: str | None, actor: str,
                    now: dt.datetime | None = None) -> KeyRecord:
        """No new certificates (enrollment and renewal); existing certificates still connect."""
        return self._transition(tenant, name, KeyAction.SUSPEND, actor=actor, reason=reason,
                                now=now)

    def reactivate_key(self, tenant: str, name: str, *, actor: str,
                       now: dt.datetime | None = None) -> KeyRecord:
        return self._transition(tenant, name, KeyAction.REACTIVATE, actor=actor, reason=None,
                                now=now)

    def revoke_key(self, tenant: str, name: str, *, reason: str | None, confirm: str | None,
                   actor: str, now: dt.datetime | None = None) -> KeyRecord:
        """Permanent: the key issues nothing more and its certificates stop connecting."""
        return self._transition(tenant, name, KeyAction.REVOKE, actor=actor, reason=reason,
                                now=now, confirm=confirm)

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
        found = None if key_id is None else self.store.key_for_authentication(tenant, key_id)
        if not secrets.secret_matches(secret, found[0] if found else None) or found is None:
            return None
        return found[1]

    # --- the provisioning service and issuers --------------------------------------------------

    def service_enabled(self, tenant: str) -> bool:
        return self.store.service_enabled(self._tenant(tenant))

    def enable_service(self, tenant: str, *, actor: str, now: dt.datetime | None = None) -> bool:
        """Turn provisioning on; the first time, create the tenant's issuer. A no-op (and no
        audit entry) when already on: False."""
        when = now or self.clock()
        return self.store.set_service(self._tenant(tenant), True, actor=actor, ts=_ts(when),
                               make_issuer=self._make_issuer(tenant, when))

    def disable_service(self, tenant: str, *, actor: str, now: dt.datetime | None = None) -> bool:
        """Stops enrollment and trust in the provisioning CA. A no-op when already off: False."""
        when = now or self.clock()
        return self.store.set_service(self._tenant(tenant), False, actor=actor, ts=_ts(when),
                               make_issuer=self._make_issuer(tenant, when))

    def renew_issuer(self, tenant: str, *, actor: str, now: dt.datetime | None = None
                     ) -> IssuerRecord:
        """Add a new current issuer and retire the previous one (it stays trusted while what it
        issued is unexpired)."""
        when = now or self.clock()
        return self.store.renew_issuer(self._tenant(tenant), actor=actor, ts=_ts(when),
                                       make_issuer=self._make_issuer(tenant, when))

    def list_issuers(self, tenant: str, *, now: dt.datetime | None = None) -> list[IssuerRecord]:
        """The tenant's issuers, oldest first, each marked trusted or not at ``now``."""
        listing = self.store.list_issuers(self._tenant(tenant))
        trusted = issuers.trusted_issuer_ids(listing.issuers, listing.latest_cert_expiry,
                                             self._now(now))
        return [attrs.evolve(r, trusted=True) if r.id in trusted else r for r in listing.issuers]

    def current_issuer(self, tenant: str) -> IssuerRecord:
        record = self.store.current_issuer(self._tenant(tenant))
        if record is None:
            raise NoIssuer(f"tenant {tenant} has no issuer: enable the provisioning service")
        return record

    # --- audit ---------------------------------------------------------------------------------

    def audit_entries(self, tenant: str | None = None) -> list[AuditEntry]:
        """Every entry (of ``tenant``), oldest first."""
        if tenant is not None:
            self._tenant(tenant)
        page = self.store.audit_page(AuditQuery(tenant=tenant, limit=None))
        return list(reversed(page.entries))

    def audit_page(self, query: AuditQuery) -> AuditPage:
        """Entries matching ``query``, newest first, and the cursor of the next page."""
        if query.tenant is not None:
            self._tenant(query.tenant)
        return self.store.audit_page(query)

    def verify_audit(self) -> AuditVerification:
        entries, head = self.store.audit_chain()
        return audit.verify(entries, head)

    def generation(self) -> int:
        return self.store.generation()
