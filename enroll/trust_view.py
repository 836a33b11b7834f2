"""What a running gateway must enforce, read from the store in one go.

A ``TrustView`` is an immutable value: per tenant, whether the provisioning service is on, the
provisioning issuers trusted now, and the revoked provisioning keys and certificates. The gateway
builds its TLS contexts and its live-session checks from it, and reads a new one whenever the
store's change generation moves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import attrs
from cryptography import x509

from enroll.authority import Authority


@attrs.frozen
class TenantProvisioning:
    enabled: bool
    #: Trusted provisioning issuers (empty when the service is off).
    issuers: tuple[x509.Certificate, ...]
    revoked_keys: frozenset[str]
    #: SHA-256 fingerprints (hex) of revoked certificates.
    revoked_certificates: frozenset[str]


@attrs.frozen
class TrustView:
    generation: int
    tenants: Mapping[str, TenantProvisioning]


def read_trust_view(authority: Authority, now: dt.datetime) -> TrustView:
    conn = authority.store.conn
    generation = authority.generation()
    revoked_keys: dict[str, set[str]] = {}
    for tenant, key_id in conn.execute(
            "SELECT tenant, id FROM provisioning_keys WHERE state = 'revoked'"):
        revoked_keys.setdefault(tenant, set()).add(key_id)
    revoked_certs: dict[str, set[str]] = {}
    for tenant, sha in conn.execute("SELECT tenant, sha256 FROM certificates WHERE state = 'revoked'"):
        revoked_certs.setdefault(tenant, set()).add(sha)
    tenants: dict[str, TenantProvisioning] = {}
    for name in authority.config.tenants:
        enabled = authority.service_enabled(name)
        issuers = tuple(i.certificate() for i in authority.list_issuers(name, now=now)
                        if i.trusted) if enabled else ()
        tenants[name] = TenantProvisioning(enabled, issuers,
                                           frozenset(revoked_keys.get(name, ())),
                                           frozenset(revoked_certs.get(name, ())))
    return TrustView(generation, tenants)
