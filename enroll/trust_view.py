"""What a running gateway must enforce, read from the store in one go.

A ``TrustView`` is an immutable value: per tenant, whether the provisioning service is on, the
provisioning issuers trusted now, and the revoked provisioning keys and certificates. The gateway
builds its TLS contexts and its live-session checks from it, and reads a new one whenever the
store's change generation moves. All of it is read in one snapshot of the store, with the
generation it reflects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import attrs
from cryptography import x509

from enroll.authority import Authority
from enroll.issuers import trusted_issuer_ids


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
    """The view of every tenant in the configuration, from one snapshot of the store."""
    inputs = authority.store.trust_inputs(tuple(authority.config.tenants))
    ts = int(now.timestamp())
    tenants: dict[str, TenantProvisioning] = {}
    for name, state in inputs.tenants.items():
        listing = state.issuers
        trusted = trusted_issuer_ids(listing.issuers, listing.latest_cert_expiry, ts)
        issuers = tuple(i.certificate() for i in listing.issuers if i.id in trusted)
        tenants[name] = TenantProvisioning(state.enabled, issuers if state.enabled else (),
                                           state.revoked_keys, state.revoked_certificates)
    return TrustView(inputs.generation, tenants)
