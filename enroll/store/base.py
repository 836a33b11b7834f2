"""The store interface: every operation Switch performs on its state, typed, engine-neutral.

Theory of operation. Each operation is one transaction: it commits before it returns, or changes
nothing and raises (``EnrollError`` for a rule it enforces, ``StoreError`` when the store
fails, ``StoreUnavailable`` when it cannot be reached). Every operation that changes something an
operator did records its audit entry in that same transaction, chained to the previous one, and
every change a running gateway must enforce moves the change generation (and, with PostgreSQL,
notifies every listening process when it commits).

``transaction()`` groups operations into one unit: inside it, each operation is a savepoint that
commits or rolls back on its own terms, and nothing is durable before the outermost unit ends.
``batch()`` is the EST listener's group commit: a unit begun lazily by its first write (a batch
that only reads takes no lock) and committed with one fsync when the batch ends.

A store object is used by one thread at a time (the server runs its calls in one worker thread,
one after another); open one per thread for parallel callers. Any number of store objects, in
any number of processes on any number of hosts (PostgreSQL), may act at the same moment: the
rules below hold across all of them (see docs/store.md for how each engine makes them hold).

Arguments are checked by the caller for what needs no stored state (name syntax, reason text,
tenant known to the config); the store enforces what does (uniqueness, limits, transitions).
Times are unix seconds, passed in.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from enroll import pki
from enroll.audit import AuditEntry
from enroll.issuers import IssuerRecord
from enroll.keys import KeyAction, KeyRecord
from enroll.operators import OperatorRecord
from enroll.store.records import (
    AuditPage,
    AuditQuery,
    CertificateRecord,
    ConsoleSession,
    IssuerFactory,
    IssuerListing,
    PendingRequest,
    TrustInputs,
)


class ChangeFeed(abc.ABC):
    """Pushed change notices (PostgreSQL ``LISTEN``), consumed from a thread of its own.

    ``wait`` blocks up to ``timeout_s`` and returns True when a change was committed since the
    previous call (possibly several), False on timeout. It connects and reconnects by itself
    (with back-off) and never raises for a lost connection: ``connected`` says whether notices
    can arrive now, and ``problem`` why not. ``close`` (from any thread) ends it; a ``wait`` in
    progress returns within its timeout."""

    @abc.abstractmethod
    def wait(self, timeout_s: float) -> bool: ...

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @property
    @abc.abstractmethod
    def problem(self) -> str | None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class Store(abc.ABC):
    #: "sqlite" or "postgresql".
    engine: str
    #: How often a server should read the change generation: the safety net under pushed
    #: notices (PostgreSQL), or the only way changes are seen (SQLite).
    poll_interval_s: float
    #: The schema version the store had when it was opened (0: created then); the current one
    #: is ``schema_version()``.
    opened_at_version: int = 0

    # --- lifecycle and units of work -----------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs and errors (never a password)."""

    @abc.abstractmethod
    def schema_version(self) -> int: ...

    @abc.abstractmethod
    def generation(self) -> int:
        """The change generation: moves whenever something a gateway enforces changed."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]: ...

    @abc.abstractmethod
    def batch(self) -> AbstractContextManager[None]: ...

    @abc.abstractmethod
    def change_feed(self) -> ChangeFeed | None:
        """A new feed of pushed change notices (the caller closes it), or None when this engine
        has none and only the generation poll tells of changes (SQLite)."""

    # --- provisioning keys ---------------------------------------------------------------------

    @abc.abstractmethod
    def create_key(self, tenant: str, *, key_id: str, name: str, secret_hash: bytes,
                   profile: str | None, actor: str, ts: int) -> KeyRecord:
        """A new active key, audited. ``KeyNameTaken`` when the tenant has a key of that name in
        any case (revoked keys included); ``KeyLimitReached`` when it has ``MAX_LIVE_KEYS``
        active or suspended keys."""

    @abc.abstractmethod
    def count_live_keys(self, tenant: str) -> int: ...

    @abc.abstractmethod
    def list_keys(self, tenant: str) -> list[KeyRecord]:
        """In the order they were created (ties within a second included)."""

    @abc.abstractmethod
    def find_key(self, tenant: str, name_or_id: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    def keys_with_profiles(self) -> list[KeyRecord]:
        """Every live key (active or suspended), of any tenant, that names a profile of its
        own; by tenant and name. What a configuration must keep defining."""

    @abc.abstractmethod
    def key_for_authentication(self, tenant: str, key_id: str) -> tuple[bytes, KeyRecord] | None:
        """The stored secret hash and the key with that id, whatever its state."""

    @abc.abstractmethod
    def rename_key(self, tenant: str, name_or_id: str, new_name: str, *, actor: str,
                   ts: int) -> KeyRecord:
        """Audited. ``UnknownKey``; ``WrongKeyState`` for a revoked key; ``KeyNameTaken``."""

    @abc.abstractmethod
    def transition_key(self, tenant: str, name_or_id: str, action: KeyAction, *,
                       reason: str | None, confirm: str | None, actor: str, ts: int) -> KeyRecord:
        """Suspend, reactivate or revoke (``enroll.keys`` rules, checked against the state the
        transaction reads: one-way even when callers race), audited, generation moved."""

    # --- the provisioning service and its issuers ----------------------------------------------

    @abc.abstractmethod
    def service_enabled(self, tenant: str) -> bool: ...

    @abc.abstractmethod
    def set_service(self, tenant: str, enabled: bool, *, actor: str, ts: int,
                    make_issuer: IssuerFactory) -> bool:
        """Turn the tenant's provisioning service on or off; the first time on, create its
        issuer with ``make_issuer`` (audited ``issuer.created``). False (nothing done, nothing
        audited) when it already was so."""

    @abc.abstractmethod
    def renew_issuer(self, tenant: str, *, actor: str, ts: int,
                     make_issuer: IssuerFactory) -> IssuerRecord:
        """A new current issuer; the others are retired. ``NoIssuer`` when there is none yet."""

    @abc.abstractmethod
    def list_issuers(self, tenant: str) -> IssuerListing: ...

    @abc.abstractmethod
    def current_issuer(self, tenant: str) -> IssuerRecord | None: ...

    @abc.abstractmethod
    def load_issuer_key(self, issuer: IssuerRecord) -> pki.PrivateKey:
        """The issuer's private key (``StoreError`` when it cannot be read or opened)."""

    @abc.abstractmethod
    def trust_inputs(self, tenants: Sequence[str]) -> TrustInputs:
        """For each tenant, what the gateway enforces, read in one snapshot."""

    # --- certificates --------------------------------------------------------------------------

    @abc.abstractmethod
    def record_certificate(self, record: CertificateRecord, *, pending_id: str | None = None,
                           unique_subject: bool = False) -> None:
        """Record an issued certificate. When it has a key: that key must still be active
        (``WrongKeyState`` otherwise) and counts it. With ``pending_id``, that approved request
        becomes issued (``WrongKeyState`` when it no longer is approved). With
        ``unique_subject``: ``SubjectTaken`` when a live certificate of the tenant (valid,
        unexpired at ``record.created_at``, its key not revoked) has the same subject and
        another key (a renewal through the same key is not refused); checked and recorded
        under one lock on the subject, on any number of hosts."""

    @abc.abstractmethod
    def find_certificate(self, tenant: str, sha256: str) -> CertificateRecord | None: ...

    @abc.abstractmethod
    def certificate_by_serial(self, tenant: str, serial: str) -> CertificateRecord | None: ...

    @abc.abstractmethod
    def list_certificates(self, tenant: str, *, key_id: str | None = None,
                          state: str | None = None) -> list[CertificateRecord]:
        """In the order they were recorded."""

    @abc.abstractmethod
    def revoke_certificate(self, serial: str, *, tenant: str | None, reason: str, actor: str,
                           ts: int) -> CertificateRecord:
        """``serial`` as stored (lower-case hex). ``UnknownCertificate`` (also when ambiguous
        across tenants); ``WrongKeyState`` when already revoked. Audited, generation moved."""

    # --- requests waiting for approval ---------------------------------------------------------

    @abc.abstractmethod
    def submit_request(self, tenant: str, *, key_id: str | None, csr_der: bytes, digest: str,
                       subject: str, operation: str, ts: int) -> PendingRequest:
        """The request with this digest: the existing one, or a new pending one (``filed``
        True: this call filed it). A key must be
        active and is marked used. A ``serverkeygen`` request already issued is set aside (its
        digest suffixed with its id) and a new one opened."""

    @abc.abstractmethod
    def list_requests(self, tenant: str | None = None, state: str | None = None
                      ) -> list[PendingRequest]:
        """In the order they were filed."""

    @abc.abstractmethod
    def decide_request(self, request_id: str, state: str, *, action: str, actor: str,
                       reason: str | None, ts: int) -> PendingRequest:
        """Approve or reject a pending request, audited. ``UnknownRequest``; ``WrongKeyState``
        when it is no longer pending."""

    # --- audit ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def append_audit(self, *, actor: str, tenant: str | None, action: str, ts: int,
                     target: str | None = None, reason: str | None = None,
                     details: Mapping[str, Any] | None = None) -> AuditEntry:
        """An entry for something that changed no other state (a refusal worth recording)."""

    @abc.abstractmethod
    def audit_page(self, query: AuditQuery) -> AuditPage:
        """Entries matching ``query``, newest first."""

    @abc.abstractmethod
    def audit_chain(self) -> tuple[Iterator[AuditEntry], tuple[int, str] | None]:
        """Every entry in sequence order and the head (last sequence number, last hash), read
        in one snapshot: the input of ``enroll.audit.verify``."""

    # --- wrong-key rate limit ------------------------------------------------------------------

    @abc.abstractmethod
    def auth_failures(self, source: str, since: float) -> list[float]:
        """When ``source`` failed to authenticate after ``since``, oldest first (every host's
        failures: the count is shared)."""

    @abc.abstractmethod
    def record_auth_failure(self, source: str, at: float, *, forget_before: float) -> None:
        """Count one failure; failures before ``forget_before`` (any source's) may be pruned."""

    # --- operators -----------------------------------------------------------------------------

    @abc.abstractmethod
    def create_operator(self, name: str, *, role: str, tenants: tuple[str, ...] | None,
                        token_id: str, token_hash: bytes, password_hash: str | None,
                        actor: str, ts: int) -> OperatorRecord:
        """Audited (``operator.created``). ``OperatorNameTaken``."""

    @abc.abstractmethod
    def get_operator(self, name: str) -> OperatorRecord | None: ...

    @abc.abstractmethod
    def operator_by_token_id(self, token_id: str) -> OperatorRecord | None: ...

    @abc.abstractmethod
    def list_operators(self) -> list[OperatorRecord]:
        """By name."""

    @abc.abstractmethod
    def set_operator_role(self, name: str, role: str, *, actor: str, ts: int) -> OperatorRecord:
        ...

    @abc.abstractmethod
    def set_operator_tenants(self, name: str, tenants: tuple[str, ...] | None, *, actor: str,
                             ts: int) -> OperatorRecord: ...

    @abc.abstractmethod
    def replace_operator_token(self, name: str, *, token_id: str, token_hash: bytes, actor: str,
                               ts: int) -> OperatorRecord:
        """The old token stops working when this commits."""

    @abc.abstractmethod
    def set_operator_password(self, name: str, password_hash: str | None, *, actor: str,
                              ts: int) -> OperatorRecord:
        """None removes the console password (the operator keeps its API token)."""

    @abc.abstractmethod
    def remove_operator(self, name: str, *, actor: str, ts: int) -> None:
        """``UnknownOperator`` when there is none. Audited."""

    # --- console sessions (enroll.store.ops_sessions) -------------------------------------------

    @abc.abstractmethod
    def create_console_session(self, session: ConsoleSession, *, actor: str) -> None:
        """Audited (``operator.signed_in``). ``UnknownOperator``."""

    @abc.abstractmethod
    def console_session(self, id_hash: str) -> tuple[ConsoleSession, OperatorRecord] | None:
        """The session and its operator now; None when either is gone."""

    @abc.abstractmethod
    def touch_console_session(self, id_hash: str, ts: int) -> None: ...

    @abc.abstractmethod
    def end_console_session(self, id_hash: str, *, actor: str | None, ts: int) -> bool:
        """With ``actor``: audited (``operator.signed_out``)."""

    @abc.abstractmethod
    def count_console_sessions(self, operator: str) -> int: ...
