"""The values the store takes and returns, beside those of ``enroll.keys`` (``KeyRecord``),
``enroll.issuers`` (``IssuerRecord``), ``enroll.audit`` (``AuditEntry``) and
``enroll.operators`` (``OperatorRecord``). Frozen: a record is what the store held when read."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
from cryptography import x509

from enroll import pki
from enroll.audit import AuditEntry
from enroll.issuers import IssuerRecord

SIMPLEENROLL = "simpleenroll"
SERVERKEYGEN = "serverkeygen"
REQUEST_STATES = ("pending", "approved", "rejected", "issued")
CERTIFICATE_STATES = ("valid", "revoked")

#: Makes a tenant's issuer number ``seq``: its certificate and private key (CPU work only: the
#: store keeps the key, as a 0600 file with SQLite, sealed in the database with PostgreSQL).
IssuerFactory = Callable[[int], tuple[x509.Certificate, pki.PrivateKey]]


@attrs.frozen
class CertificateRecord:
    serial: str
    issuer_id: str
    tenant: str
    key_id: str | None
    subject: str
    not_before: int
    not_after: int
    sha256: str
    pem: str
    state: str
    revoked_at: int | None
    revoke_reason: str | None
    created_at: int

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pem.encode())


@attrs.frozen
class PendingRequest:
    id: str
    tenant: str
    key_id: str | None
    request_digest: str
    subject: str
    state: str
    created_at: int
    decided_at: int | None
    decided_by: str | None
    reason: str | None
    certificate_serial: str | None
    #: ``simpleenroll`` (the client's key) or ``serverkeygen`` (the server makes the key).
    operation: str = SIMPLEENROLL
    #: Not stored: True on the record ``Store.submit_request`` returns when that very call
    #: filed the request (what notifies "request.pending" once, not on every repeat).
    filed: bool = attrs.field(default=False, eq=False, kw_only=True)


@attrs.frozen
class IssuerListing:
    """A tenant's issuers (oldest first) with what trust is computed from
    (``enroll.issuers.trusted_issuer_ids``): the latest ``not_after`` each issuer signed."""

    issuers: tuple[IssuerRecord, ...]
    latest_cert_expiry: Mapping[str, int]


@attrs.frozen
class TenantTrustInputs:
    enabled: bool
    issuers: IssuerListing
    revoked_keys: frozenset[str]
    #: SHA-256 fingerprints (hex) of revoked certificates.
    revoked_certificates: frozenset[str]


@attrs.frozen
class TrustInputs:
    """Everything a gateway enforces, read in one snapshot with the change generation it
    reflects."""

    generation: int
    tenants: Mapping[str, TenantTrustInputs]


@attrs.frozen
class AuditQuery:
    """Filters of an audit read; entries come newest first. ``before_seq`` is the cursor: the
    ``next_cursor`` of the previous page."""

    tenant: str | None = None
    actor: str | None = None
    action: str | None = None
    #: Entries about one thing: a key's id, a certificate's serial, a request's id, ...
    target: str | None = None
    #: Only entries of one of these tenants (None: no such limit; entries of no tenant, such
    #: as operators', are never among them).
    tenants: tuple[str, ...] | None = None
    #: Unix seconds, both ends included.
    since: int | None = None
    until: int | None = None
    #: At most this many entries (None: all that match).
    limit: int | None = 100
    before_seq: int | None = None


@attrs.frozen
class ConsoleSession:
    """A console sign-in (``gateway.api.session``): the operator it proves, kept under the
    SHA-256 of its id (the id itself is only in the browser's cookie). Times are Unix seconds."""

    id_hash: str
    operator: str
    created_at: int
    last_seen_at: int
    #: Seconds without a request after which it ends.
    idle_timeout: int
    #: When it ends whatever its use (the absolute lifetime).
    expires_at: int
    #: The address it was signed in from (for the audit log and the operator).
    source: str

    def expired(self, now: int) -> bool:
        return now >= self.expires_at or now >= self.last_seen_at + self.idle_timeout


@attrs.frozen
class AuditPage:
    entries: tuple[AuditEntry, ...]
    #: Pass as ``AuditQuery.before_seq`` for the next (older) page; None: this was the last.
    next_cursor: int | None
