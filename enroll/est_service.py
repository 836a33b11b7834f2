"""The EST service: one request in, one reply out.

The listener (``gateway.enroll_listener``) does TLS and HTTP and hands over an ``EstRequest``: the
method, path, the few headers EST uses, the body, the SNI name and the DER of the certificate the
client presented (accepted by TLS whatever it is: it is judged here, per tenant). It is parsed only
by the operations that use it (re-enrollment, serverkeygen without a provisioning key): OpenSSL
accepts encodings that cryptography's strict DER parser refuses (a BOOLEAN TRUE as 0x01), and such
a certificate is refused there as ``certificate_untrusted`` (fail closed), never a crash, and
never a concern of the requests that do not use it. ``handle`` is synchronous (the store's calls
block) and runs in a worker thread; ``now`` is passed in (the wrong-key rate limit counts in it, shared by every host through the store).

Order of checks for ``simpleenroll``: route and tenant; the provisioning service is on; the source
is not rate limited; the provisioning key authenticates (a failure counts against the source); the
key is active (suspended and revoked keys are refused, and audited); the content type; base64;
the CSR parses, its signature verifies, its key type and subject fit the profile; then manual
approval or issuance. Nothing is stored for a refused request: every parameter is checked before
a pending request or a certificate is written.

Every reply that carries an issued certificate also names, in ``Switch-Renew-Before``, the
renew-before window in seconds of the profile that issued it (the key's own profile when it has
one, else the tenant's): a Switch extension, so that agents renew when the operator's profile says
without being configured to match it. Standard EST clients ignore an unknown header.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from config.model import Profile, SwitchConfig, Tenant
from enroll import est_wire, pki
from enroll.audit import Action
from enroll.csr import (
    CsrRequest,
    check_csr,
    csr_attributes,
    parse_csr,
    requested_common_name,
    verify_proof_of_possession,
)
from enroll.errors import (
    BadCredentials,
    CertificateExpired,
    CertificateRequired,
    CertificateRevoked,
    CertificateUnknown,
    CertificateUntrusted,
    CredentialsRequired,
    EnrollError,
    InternalError,
    KeyRevoked,
    KeySuspended,
    MalformedCredentials,
    RateLimited,
    RequestRejected,
    ServiceDisabled,
    StoreError,
    StoreUnavailable,
    SubjectNotAllowed,
    TenantMismatch,
    UnknownProfile,
    UnknownTenant,
    UnsupportedMediaType,
)
from enroll.est_messages import EstReply as EstReply
from enroll.est_messages import EstRequest as EstRequest
from enroll.est_messages import refusal
from enroll.issuance import CertificateRecord, Issuance, PendingRequest
from enroll.keys import KeyRecord, KeyState
from enroll.policy import (
    Issued,
    check_pkcs12_password,
    check_renewal,
    issued_for_client_auth,
    pkcs12_bundle,
)
from enroll.ratelimit import Limiter, SharedFailureLimiter

log = structlog.get_logger("switch.enroll")

PKCS10 = "application/pkcs10"
PKCS12_PASSWORD_HEADER = "x-switch-pkcs12-password"
#: The issuing profile's ``renew_before`` in whole seconds, on every reply with a certificate.
RENEW_BEFORE_HEADER = "Switch-Renew-Before"


def _renew_before(profile: Profile) -> tuple[str, str]:
    return (RENEW_BEFORE_HEADER, str(int(profile.renew_before_s)))


class EstService:
    def __init__(self, config: SwitchConfig, issuance: Issuance,
                 limiter: Limiter | None = None, *, approval_retry_after_s: int = 60) -> None:
        self.config = config
        self.issuance = issuance
        self.authority = issuance.authority
        # Not `limiter or ...`: a FailureLimiter has a length, and an empty one is falsy.
        self.limiter = (limiter if limiter is not None
                        else SharedFailureLimiter(issuance.authority.store))
        self.approval_retry_after_s = approval_retry_after_s
        self.max_body_bytes = config.enroll.max_body_bytes
        #: Certificates signed by the batch being handled, recorded at its end (``handle_batch``).
        self._deferred: list[tuple[int, CertificateRecord, Profile]] | None = None

    def handle_batch(self, batch: Sequence[tuple[EstRequest, dt.datetime, float]]
                     ) -> list[EstReply]:
        """Requests handled in turn, each as ``handle`` does, with one commit for them all (the
        store's group commit: one fsync however many certificates the batch issued). The
        certificates are signed first, with no write lock held, and recorded together after the
        batch's last request was handled: the store's writer lock (SQLite's one writer, shared by
        every worker process) is held for the inserts and the commit, not for the signing. A
        certificate whose record is refused then (its key revoked meanwhile, its subject taken)
        is never sent: that request gets the refusal. A request that fails unexpectedly gets 500
        and its certificate is not recorded; if the commit fails or the store cannot be reached,
        nothing of the batch was stored and every request gets 503 ``store_unavailable``. The
        replies may be sent only once this has returned. One thread at a time (as the store)."""
        replies: list[EstReply] = []
        deferred: list[tuple[int, CertificateRecord, Profile]] = []
        try:
            with self.authority.store.batch():
                self._deferred = deferred
                try:
                    for index, (request, now, monotonic) in enumerate(batch):
                        kept = len(deferred)
                        replies.append(self._handle_in_batch(request, now, monotonic))
                        # Only the certificate this reply carries is recorded (none for a refusal).
                        deferred[kept:] = [(index, record, profile)
                                           for _, record, profile in deferred[kept:]
                                           if record.serial == replies[index].serial]
                finally:
                    self._deferred = None
                for index, record, profile in deferred:
                    replies[index] = self._record(replies[index], record, profile)
        except StoreError as exc:
            log.error("est_batch_not_stored", requests=len(batch), error=exc.message)
            return [refusal(StoreUnavailable("the store could not record this request"))
                    ] * len(batch)
        return replies

    def _handle_in_batch(self, request: EstRequest, now: dt.datetime, monotonic: float
                         ) -> EstReply:
        try:
            return self.handle(request, now, monotonic)
        except StoreUnavailable:
            raise  # nothing of the batch can be stored: every request gets 503
        except Exception:  # noqa: BLE001 - one request must not fail the others
            log.exception("est_request_failed", path=request.path, source=request.source)
            return refusal(InternalError("internal error"))

    def _record(self, reply: EstReply, record: CertificateRecord, profile: Profile) -> EstReply:
        """``reply`` once its certificate is recorded (in the batch), else the refusal."""
        try:
            self.issuance.record(record, profile=profile)
        except StoreUnavailable:
            raise
        except EnrollError as exc:
            refused = refusal(exc, reply.tenant)
            if refused.status >= 500:
                log.warning("est_store_refusal", reason=exc.reason, error=exc.message)
            return refused
        except Exception:  # noqa: BLE001 - one request must not fail the others
            log.exception("est_record_failed", serial=record.serial)
            return refusal(InternalError("internal error"))
        return reply

    def _issue(self, tenant: Tenant, checked: CsrRequest, *, profile: Profile,
               key: KeyRecord | None, now: dt.datetime, pending_id: str | None = None
               ) -> tuple[Issued, CertificateRecord]:
        """Sign, and record now or (in ``handle_batch``, for a request not held for approval)
        with the batch."""
        if self._deferred is None or pending_id is not None:
            return self.issuance.issue(tenant.name, checked, profile=profile, key=key, now=now,
                                       pending_id=pending_id)
        cert, record = self.issuance.sign(tenant.name, checked, profile=profile, key=key, now=now)
        self._deferred.append((-1, record, profile))
        return cert, record

    def handle(self, request: EstRequest, now: dt.datetime, monotonic: float) -> EstReply:
        tenant: Tenant | None = None
        try:
            route = est_wire.parse_est_path(request.method, request.path)
            tenant = self._tenant(route.label, request.server_name)
            op = route.operation
            if op == "cacerts":
                return self._cacerts(tenant, now)
            if op == "csrattrs":
                return self._csrattrs(tenant)
            if not self.authority.service_enabled(tenant.name):
                raise ServiceDisabled("the provisioning service is disabled")
            key: KeyRecord | None
            if op == "simpleenroll":
                key = self._key_from_secret(request, tenant, now, monotonic)
                return self._enroll(request, tenant, key, now)
            if op == "simplereenroll":
                current, key = self._key_from_certificate(request, tenant, now, op)
                return self._reenroll(request, tenant, key, current, now)
            holder, key = self._authenticate_any(request, tenant, now, monotonic, op)
            return self._serverkeygen(request, tenant, key, holder, now,
                                      pkcs12=op == "serverkeygen-pkcs12")
        except EnrollError as exc:
            reply = refusal(exc, tenant.name if tenant else None)
            if reply.status >= 500:  # Switch's side: a store problem or a change made meanwhile
                log.warning("est_store_refusal", reason=exc.reason, error=exc.message)
            return reply

    # --- tenant and authentication -------------------------------------------------------------

    def _tenant(self, label: str | None, server_name: str | None) -> Tenant:
        by_sni = self.config.tenant_for_name(server_name)
        if label is not None:
            tenant = self.config.tenants.get(label)
            if tenant is None:
                raise UnknownTenant(f"unknown tenant label {label!r}")
            if by_sni is not None and by_sni is not tenant:
                raise TenantMismatch(f"SNI names tenant {by_sni.name}, the path {label}")
            return tenant
        tenant = self.config.tenant_for_hostname(server_name)
        if tenant is None:
            raise UnknownTenant("no tenant for this SNI name and no label in the path")
        return tenant

    def _key_from_secret(self, request: EstRequest, tenant: Tenant, now: dt.datetime,
                         monotonic: float) -> KeyRecord:
        del monotonic  # failures are counted in wall-clock time: every host shares the count
        wait = self.limiter.retry_after(request.source, now.timestamp())
        if wait is not None:
            raise RateLimited("too many failed attempts from this source", retry_after=wait)
        try:
            secret = est_wire.parse_authorization(request.headers.get("authorization"))
        except MalformedCredentials:
            self._failed(request, tenant, now)
            raise
        if secret is None:
            raise CredentialsRequired(
                "a provisioning key is required (HTTP Basic password or Bearer)")
        key = self.authority.authenticate_key(tenant.name, secret, now=now)
        if key is None:
            self._failed(request, tenant, now)
            raise BadCredentials("wrong provisioning key")
        self._require_active(key, tenant, request, "simpleenroll", now)
        return key

    def _failed(self, request: EstRequest, tenant: Tenant, now: dt.datetime) -> None:
        self.limiter.record_failure(request.source, now.timestamp())
        if self.limiter.retry_after(request.source, now.timestamp()) is not None:
            log.warning("est_source_locked_out", source=request.source, tenant=tenant.name)

    def _require_active(self, key: KeyRecord, tenant: Tenant, request: EstRequest, op: str,
                        now: dt.datetime) -> None:
        if key.state is KeyState.ACTIVE:
            return
        refusal = KeyRevoked if key.state is KeyState.REVOKED else KeySuspended
        self.authority.store.append_audit(
            ts=int(now.timestamp()), actor=f"est:{request.source}", tenant=tenant.name,
            action=Action.ENROLLMENT_REFUSED, target=key.id, reason=refusal.reason,
            details={"operation": op})
        raise refusal(f"provisioning key {key.id} is {key.state.value}")

    def _key_from_certificate(self, request: EstRequest, tenant: Tenant, now: dt.datetime,
                              op: str) -> tuple[x509.Certificate, KeyRecord | None]:
        """Re-enrollment: the client's current certificate, issued by this tenant's provisioning
        issuers, valid now, not revoked, and its key neither suspended nor revoked."""
        if not request.client_cert_der:
            raise CertificateRequired(
                "re-enrollment needs the current certificate (TLS client auth)")
        try:
            leaf = x509.load_der_x509_certificate(request.client_cert_der)
        except ValueError as exc:
            raise CertificateUntrusted(f"the client certificate does not parse: {exc}") from exc
        issuers = self.issuance.trusted_issuer_certificates(tenant.name, now)
        if not any(issued_for_client_auth(leaf, issuer) for issuer in issuers):
            raise CertificateUntrusted("the certificate is not from this tenant's provisioning CA")
        if pki.validity_problem(leaf, now) is not None:
            raise CertificateExpired("the current certificate is not valid now")
        record = self.issuance.find(tenant.name, leaf)
        if record is None:
            raise CertificateUnknown("Switch has no record of this certificate")
        if record.state == "revoked":
            raise CertificateRevoked("the current certificate is revoked")
        key = self.authority.get_key(tenant.name, record.key_id) if record.key_id else None
        if key is not None:
            self._require_active(key, tenant, request, op, now)
        return leaf, key

    def _authenticate_any(self, request: EstRequest, tenant: Tenant, now: dt.datetime,
                          monotonic: float, op: str
                          ) -> tuple[x509.Certificate | None, KeyRecord | None]:
        """serverkeygen: the provisioning key when an Authorization header is sent, else the
        current certificate (then also returned: the request must keep its CN)."""
        if request.headers.get("authorization") is None and request.client_cert_der:
            return self._key_from_certificate(request, tenant, now, op)
        return None, self._key_from_secret(request, tenant, now, monotonic)

    # --- operations ----------------------------------------------------------------------------

    def _profile(self, tenant: Tenant, key: KeyRecord | None) -> Profile:
        """The profile that issues for ``key`` (its own, else the tenant's). A profile the
        configuration no longer defines is the operator's mistake, not the client's and not a
        crash: ``unknown_profile`` (503), logged for the operator."""
        profile = self.config.profile_for(tenant, key.profile if key else None)
        if profile is None:
            name = (key.profile if key else None) or tenant.profile
            log.error("est_unknown_profile", tenant=tenant.name, key_id=key.id if key else None,
                      profile=name, detail="the configuration does not define this profile: "
                      "define it again, or revoke the key")
            raise UnknownProfile(f"profile {name!r} is not in the configuration")
        return profile

    def _csr(self, request: EstRequest) -> x509.CertificateSigningRequest:
        content_type = request.headers.get("content-type", b"").split(b";")[0].strip().lower()
        if content_type != PKCS10.encode():
            raise UnsupportedMediaType(f"expected {PKCS10}")
        return parse_csr(est_wire.decode_base64_body(request.body, max_bytes=self.max_body_bytes))

    def _certificate_reply(self, tenant: Tenant, cert_der: bytes, key: KeyRecord | None,
                           profile: Profile, serial: str, subject: str | None = None) -> EstReply:
        return EstReply(200, est_wire.encode_base64_body(est_wire.certs_only_der(cert_der)),
                        est_wire.PKCS7_CERTS_ONLY,
                        (("Content-Transfer-Encoding", "base64"), _renew_before(profile)),
                        "ok", tenant.name, key.id if key else None, serial, subject)

    def _pending_reply(self, tenant: Tenant, key: KeyRecord | None, pending: PendingRequest
                       ) -> EstReply:
        return EstReply(202, b"202 pending_approval\n", "text/plain; charset=utf-8",
                        (("Retry-After", str(self.approval_retry_after_s)),),
                        "pending", tenant.name, key.id if key else None, subject=pending.subject,
                        request_id=pending.id, filed=pending.filed)

    def _enroll(self, request: EstRequest, tenant: Tenant, key: KeyRecord | None,
                now: dt.datetime) -> EstReply:
        csr = self._csr(request)
        profile = self._profile(tenant, key)
        checked = check_csr(csr, profile)
        pending_id = None
        if profile.approval == "manual":
            pending = self.issuance.submit(tenant.name, key,
                                           csr.public_bytes(serialization.Encoding.DER), checked, now)
            if pending.state == "pending":
                return self._pending_reply(tenant, key, pending)
            if pending.state == "rejected":
                raise RequestRejected("the request was rejected")
            if pending.state == "issued" and pending.certificate_serial:
                return self._issued_again(tenant, key, profile, pending.certificate_serial,
                                          now)
            pending_id = pending.id
        issued, record = self._issue(tenant, checked, profile=profile, key=key, now=now,
                                   pending_id=pending_id)
        return self._certificate_reply(tenant, issued.der, key, profile, record.serial,
                                       record.subject)

    def _issued_again(self, tenant: Tenant, key: KeyRecord | None, profile: Profile, serial: str,
                      now: dt.datetime) -> EstReply:
        """An approved request repeated after its certificate was issued gets that certificate
        again, while it is good. Once it is revoked or expired, the same public key gets nothing
        more: the agent makes a new key pair, which is a new request (needing a new approval)."""
        record = self.issuance.certificate(tenant.name, serial)
        if record is None or record.state == "revoked":
            raise CertificateRevoked(f"certificate {serial} of this request is revoked")
        cert = record.certificate()
        if pki.validity_problem(cert, now) is not None:
            raise CertificateExpired(f"certificate {serial} of this request is not valid now")
        return self._certificate_reply(tenant, cert.public_bytes(serialization.Encoding.DER),
                                       key, profile, record.serial)

    def _reenroll(self, request: EstRequest, tenant: Tenant, key: KeyRecord | None,
                  current: x509.Certificate, now: dt.datetime) -> EstReply:
        csr = self._csr(request)
        profile = self._profile(tenant, key)
        checked = check_csr(csr, profile)
        check_renewal(current, checked.common_name, now)
        issued, record = self._issue(tenant, checked, profile=profile, key=key, now=now)
        return self._certificate_reply(tenant, issued.der, key, profile, record.serial,
                                       record.subject)

    def _serverkeygen(self, request: EstRequest, tenant: Tenant, key: KeyRecord | None,
                      current: x509.Certificate | None, now: dt.datetime, *, pkcs12: bool
                      ) -> EstReply:
        """The server makes the key pair. Every parameter (CSR, CN, PKCS#12 password) is checked
        before anything is stored. Authenticated by the current certificate (``current``), the
        CN must be that certificate's, and, like simplereenroll, the request is not held for
        approval; authenticated by a provisioning key under a manual profile, it is: the
        approval covers (provisioning key, CN) and the key pair is made when the approved
        request is repeated (see ``Issuance.submit_serverkeygen``)."""
        csr = self._csr(request)
        verify_proof_of_possession(csr)
        profile = self._profile(tenant, key)
        common_name = requested_common_name(csr)
        if not re.fullmatch(profile.subject_pattern, common_name):
            raise SubjectNotAllowed("the CN does not match the profile's subject pattern")
        password = request.headers.get(PKCS12_PASSWORD_HEADER) if pkcs12 else None
        check_pkcs12_password(password)
        if current is not None:
            check_renewal(current, common_name, now)
        pending_id = None
        if current is None and profile.approval == "manual":
            pending = self.issuance.submit_serverkeygen(
                tenant.name, key, csr.public_bytes(serialization.Encoding.DER), common_name, now)
            if pending.state == "pending":
                return self._pending_reply(tenant, key, pending)
            if pending.state == "rejected":
                raise RequestRejected("the request was rejected")
            pending_id = pending.id  # approved: this repeat gets the one key pair it allows
        key_type = profile.key_types[0]
        private_key = pki.generate_key(key_type)
        checked = CsrRequest(private_key.public_key(), key_type, common_name)
        issued, record = self._issue(tenant, checked, profile=profile, key=key, now=now,
                                   pending_id=pending_id)
        if pkcs12:
            chain = self.issuance.trusted_issuer_certificates(tenant.name, now)[:1]
            bundle, used = pkcs12_bundle(private_key, issued.certificate, chain, password)
            headers: tuple[tuple[str, str], ...] = (("Content-Transfer-Encoding", "base64"),
                                                    _renew_before(profile))
            if password is None:
                headers += ((PKCS12_PASSWORD_HEADER, used.decode()),)
            return EstReply(200, est_wire.encode_base64_body(bundle), "application/pkcs12",
                            headers, "ok", tenant.name, key.id if key else None, record.serial,
                            record.subject)
        der = private_key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        content_type, body = est_wire.multipart_serverkeygen(der,
                                                             est_wire.certs_only_der(issued.der))
        return EstReply(200, body, content_type, (_renew_before(profile),), "ok", tenant.name,
                        key.id if key else None, record.serial, record.subject)

    def _cacerts(self, tenant: Tenant, now: dt.datetime) -> EstReply:
        if not self.authority.service_enabled(tenant.name):
            raise ServiceDisabled("the provisioning service is disabled")
        certs = self.issuance.trusted_issuer_certificates(tenant.name, now)
        return EstReply(200, est_wire.encode_base64_body(est_wire.certs_only(certs)),
                        est_wire.PKCS7_CERTS_ONLY_GENERIC, (("Content-Transfer-Encoding", "base64"),),
                        "ok", tenant.name)

    def _csrattrs(self, tenant: Tenant) -> EstReply:
        profile = self._profile(tenant, None)
        items = csr_attributes(profile.key_types)
        return EstReply(200, est_wire.encode_base64_body(est_wire.csrattrs(items)),
                        "application/csrattrs", (("Content-Transfer-Encoding", "base64"),),
                        "ok", tenant.name)
