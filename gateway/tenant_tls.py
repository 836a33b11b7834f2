"""Per-tenant TLS on the gateway port: trust state, SNI routing and the in-handshake check.

Theory of operation: a ``TrustState`` is an immutable snapshot built from the config (organisation
CAs and CRLs, read once per config load) and the store (``TrustView``: provisioning issuers while
the service is on, revoked keys and certificates). It holds one ``SSL.Context`` per tenant that
trusts exactly that tenant's anchors and names them in the CertificateRequest. A new snapshot is
built and swapped in whole when the store or the config changes; a connection keeps the snapshot
it was accepted under (``HandshakeInfo.state``, until its handshake is over).

A connection starts on the *entry* context: the default tenant's if one is configured, else a
context that trusts nothing. The SNI callback switches to the tenant's context, or ends the
handshake with the alert ``unrecognized_name`` when the name (or its absence) chooses no tenant
(fail closed, before the server has signed anything). ``set_context`` changes the certificate
store the chain is verified against but — the pitfall in STYLE.md — not the verify mode and
callback, which OpenSSL copied from the entry context when the connection was made: so the entry
context carries the one verify callback, which reads the tenant from the connection's
``HandshakeInfo``. Both callbacks are cffi callbacks made once for the module and installed with
OpenSSL's own setters (``gateway.tls_context.set_verify_callback``): no per-connection or
per-state callback objects, no Python certificate object per certificate, and a refusal can set
the verification error OpenSSL chooses the TLS alert from (``gateway.tls_refusals``: a revoked
key is ``certificate_revoked``, never ``internal_error``). At depth 0, if OpenSSL accepted the
chain, the verify callback runs ``gateway.peer.check_peer`` on the chain OpenSSL built and
refuses inside the handshake when the decision says no. A tenant with pinned leaves
(``organisation_certs``) is the one exception to "OpenSSL's errors refuse at once": there the
first error is set aside (``chain_error``) until depth 0, where a leaf whose SHA-256 is pinned
(``gateway.peer.pinned``) is judged alone, as its own anchor, and any other leaf is refused with
that error. Pinned leaves are never added to a trust store, so they vouch for nothing they sign.
Whatever the outcome,
``HandshakeInfo`` (the connection's app data) says which tenant, why it was refused, or the
decision with the identity.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import structlog
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from config.model import SwitchConfig
from config.tls_material import (
    PrivateKey,
    crl_signer,
    load_ca_certificates,
    load_client_certificates,
    load_crl,
)
from enroll.trust_view import TrustView
from gateway.peer import (
    CrlIssuer,
    Decision,
    TenantTrust,
    check_peer,
    crl_issuer,
    fingerprint,
    pinned,
)
from gateway.tls import new_connection
from gateway.tls_context import VERIFY_CALLBACK, connection_of, server_context, set_verify_callback
from gateway.tls_refusals import verify_error_for, verify_error_sent_for, x509_error_reason

log = structlog.get_logger("switch.gateway")

VERIFY_REQUIRED = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
#: The alert for a server name that chooses no tenant (RFC 6066 3; ``SSL_AD_UNRECOGNIZED_NAME``,
#: which cryptography's bindings do not export).
ALERT_UNRECOGNIZED_NAME = 112
#: The alert when the SNI callback itself failed (a bug): ``internal_error``.
ALERT_INTERNAL_ERROR = 80


#: Intermediates ``TrustState`` keeps parsed; the cache starts again when full.
INTERMEDIATES_CACHED = 1024


@attrs.define(eq=False)
class HandshakeInfo:
    """Per-connection notes made by the TLS callbacks. ``state`` is the trust state the
    connection was accepted under, for the callbacks; the listener drops it once the handshake
    is over, so that a live session does not keep an old trust state alive."""

    state: TrustState | None = None
    tenant: str | None = None
    server_name: str | None = None
    refusal: str | None = None
    decision: Decision | None = None
    #: The first error OpenSSL found in the chain, set aside (tenants with pinned leaves only)
    #: until depth 0 says whether the leaf is pinned.
    chain_error: str | None = None


@attrs.frozen
class OrganisationMaterial:
    cas: tuple[x509.Certificate, ...]
    #: Revoked serials by the CRLs' verified signer (``peer.CrlIssuer``: name and key).
    revoked_serials: Mapping[CrlIssuer, frozenset[int]]
    #: The latest ``nextUpdate`` of each issuer's CRLs (``datetime.max`` for a CRL without one).
    crl_next_update: Mapping[CrlIssuer, dt.datetime] = attrs.field(factory=dict)
    #: SHA-256 of the pinned leaves (``organisation_certs``: the files' and the fingerprints).
    pinned: frozenset[bytes] = frozenset()


def load_organisation_material(config: SwitchConfig) -> dict[str, OrganisationMaterial]:
    """Read every tenant's organisation CAs and CRLs. A CRL must be signed by one of the tenant's
    CAs (else ValueError: an unsigned revocation list is no list), and applies to what that CA
    issued: it is filed under its signer's name and key (``peer.crl_issuer``)."""
    material: dict[str, OrganisationMaterial] = {}
    for tenant in config.tenants.values():
        cas = tuple(c for path in tenant.organisation_cas for c in load_ca_certificates(path))
        revoked: dict[CrlIssuer, set[int]] = {}
        next_update: dict[CrlIssuer, dt.datetime] = {}
        for path in tenant.organisation_crls:
            crl = load_crl(path)
            signer = crl_signer(crl, list(cas))
            if signer is None:  # as the loader checks; defence in depth
                raise ValueError(f"{path}: the CRL is not signed by an organisation CA of tenant "
                                 f"{tenant.name}")
            issuer = crl_issuer(signer)
            revoked.setdefault(issuer, set()).update(r.serial_number for r in crl)
            when = crl.next_update_utc or dt.datetime.max.replace(tzinfo=dt.UTC)
            next_update[issuer] = max(next_update.get(issuer, when), when)
        leaves = {fingerprint(c) for path in tenant.organisation_certs
                  for c in load_client_certificates(path)}
        leaves.update(bytes.fromhex(f) for f in tenant.organisation_cert_sha256)
        material[tenant.name] = OrganisationMaterial(
            cas, {k: frozenset(v) for k, v in revoked.items()}, next_update, frozenset(leaves))
    return material


@attrs.frozen
class TrustState:
    config: SwitchConfig
    generation: int
    tenants: Mapping[str, TenantTrust]
    contexts: Mapping[str, SSL.Context]
    entry: SSL.Context
    clock: Callable[[], dt.datetime]
    #: Every tenant's trust anchors by their DER: (SHA-256, certificate). The verify callback
    #: finds the anchor OpenSSL chained to here instead of converting and hashing it each time.
    anchors: Mapping[bytes, tuple[bytes, x509.Certificate]] = attrs.field(factory=dict)
    #: Intermediate CAs of verified chains by their DER, parsed once (``judge``; bounded).
    intermediates: dict[bytes, x509.Certificate] = attrs.field(factory=dict, eq=False)

    def tenant_name_for(self, server_name: str | bytes | None) -> str | None:
        """The tenant an SNI name chooses (``SwitchConfig.tenant_for_hostname``), or None."""
        tenant = self.config.tenant_for_hostname(server_name)
        return tenant.name if tenant is not None else None

    def new_connection(self, sock: trio.socket.SocketType | None = None) -> SSL.Connection:
        """A server connection on the entry context, on ``sock`` (None: memory BIOs)."""
        conn = new_connection(self.entry, sock)
        conn.set_app_data(HandshakeInfo(self, tenant=self.config.default_tenant))
        conn.set_accept_state()
        return conn

    def choose_tenant(self, conn: SSL.Connection, info: HandshakeInfo) -> bool:
        """The SNI callback's work: note the name, choose the tenant and switch to its context;
        False (refuse) when no tenant is chosen."""
        raw = conn.get_servername()
        info.server_name = raw.decode("ascii", "replace").lower() if raw else None  # for logs
        tenant = self.tenant_name_for(raw)
        info.tenant = tenant
        if tenant is None:
            info.refusal = "unknown_server_name" if info.server_name else "no_server_name"
            return False
        # The verify mode and callback stay the entry context's (set_context keeps them; see the
        # module docstring); the callback finds the tenant in the connection's HandshakeInfo.
        conn.set_context(self.contexts[tenant])
        return True

    def judge(self, info: HandshakeInfo, ok: int, store_ctx: Any) -> str | None:
        """The verify callback's work, for each certificate of the chain OpenSSL built (the
        anchor first, the leaf at depth 0): None to go on, else the reason to refuse. Judges
        against the trust of the tenant the connection's SNI chose; at depth 0 runs
        ``check_peer`` and keeps its decision."""
        trust = self.tenants.get(info.tenant) if info.tenant else None
        if trust is None:
            return info.refusal or "no_server_name"
        if not ok:
            error = x509_error_reason(_lib.X509_STORE_CTX_get_error(store_ctx))
            if not trust.organisation_leaves:
                return error
            # Pinned leaves need no chain: set OpenSSL's verdict aside until depth 0.
            info.chain_error = info.chain_error or error
        if _lib.X509_STORE_CTX_get_error_depth(store_ctx) != 0:
            return None
        if info.chain_error is not None:  # only a pinned leaf gets past a chain error
            leaf = _current_certificate(store_ctx).to_cryptography()
            if not pinned(trust, fingerprint(leaf)):
                return info.chain_error
            decision = check_peer(trust, [leaf], self.clock())
            info.decision = decision
            return None if decision.allowed else decision.reason
        ders = _verified_chain_der(store_ctx)
        if not ders:
            return "no_client_certificate"
        # The anchor and any intermediate from the caches (per DER, never per leaf: a leaf is
        # parsed and hashed at each handshake, so a first connection costs what a reconnection
        # does); the leaf from its DER, hashed as it is.
        known = self.anchors.get(ders[-1])
        certificates = [x509.load_der_x509_certificate(ders[0])] if len(ders) > 1 else []
        certificates += [self._intermediate(der) for der in ders[1:-1]]
        certificates.append(known[1] if known else x509.load_der_x509_certificate(ders[-1]))
        decision = check_peer(trust, certificates, self.clock(),
                              anchor_fingerprint=known[0] if known else None,
                              leaf_fingerprint=hashlib.sha256(ders[0]).digest())
        info.decision = decision
        return None if decision.allowed else decision.reason

    def _intermediate(self, der: bytes) -> x509.Certificate:
        """An intermediate CA of a verified chain, parsed once per trust state (bounded)."""
        cert = self.intermediates.get(der)
        if cert is None:
            if len(self.intermediates) >= INTERMEDIATES_CACHED:
                self.intermediates.clear()
            cert = self.intermediates[der] = x509.load_der_x509_certificate(der)
        return cert


def _current_certificate(store_ctx: Any) -> crypto.X509:
    """The certificate the verify callback is called about (up-referenced for its ``X509``)."""
    cert = _lib.X509_STORE_CTX_get_current_cert(store_ctx)
    _lib.X509_up_ref(cert)
    return crypto.X509._from_raw_x509_ptr(cert)


def _verified_chain_der(store_ctx: Any) -> list[bytes]:
    """The DER of each certificate of the chain OpenSSL built, leaf first
    (``X509_STORE_CTX_get1_chain``, each certificate written out with ``i2d_X509_bio``: no
    Python certificate object per certificate)."""
    stack = _lib.X509_STORE_CTX_get1_chain(store_ctx)
    if stack == _ffi.NULL:
        return []
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    try:
        if bio == _ffi.NULL:
            raise MemoryError("BIO_new failed")
        ders = []
        for i in range(_lib.sk_X509_num(stack)):
            if _lib.i2d_X509_bio(bio, _lib.sk_X509_value(stack, i)) != 1:
                raise ValueError("i2d_X509_bio failed")
            data = _ffi.new("char **")
            size = _lib.BIO_get_mem_data(bio, data)
            buffer = _ffi.new("char[]", size)
            if _lib.BIO_read(bio, buffer, size) != size:
                raise ValueError("BIO_read failed")
            ders.append(_ffi.buffer(buffer, size)[:])
        return ders
    finally:
        if bio != _ffi.NULL:
            _lib.BIO_free(bio)
        for i in range(_lib.sk_X509_num(stack)):
            _lib.X509_free(_lib.sk_X509_value(stack, i))
        _lib.sk_X509_free(stack)


def _server_name(ssl: Any, alert: Any, arg: Any) -> int:
    """The SNI callback of every gateway connection (``TrustState.choose_tenant``)."""
    info: HandshakeInfo | None = None
    try:
        conn = SSL.Connection._reverse_mapping[ssl]
        info = conn.get_app_data()
        assert info is not None and info.state is not None
        if info.state.choose_tenant(conn, info):
            return int(_lib.SSL_TLSEXT_ERR_OK)
        alert[0] = ALERT_UNRECOGNIZED_NAME
    except Exception:  # fail closed: a bug, logged; the peer learns nothing but internal_error
        log.exception("server_name_callback_failed")
        if info is not None:
            info.refusal = info.refusal or "internal_error"
        alert[0] = ALERT_INTERNAL_ERROR
    return int(_lib.SSL_TLSEXT_ERR_ALERT_FATAL)


def _verify(ok: int, store_ctx: Any) -> int:
    """The verify callback of every gateway connection (``TrustState.judge``). A refusal leaves
    the verification error that makes OpenSSL send the alert naming it
    (``gateway.tls_refusals.verify_error_for``), and its reason in ``HandshakeInfo.refusal``."""
    info: HandshakeInfo | None = None
    try:
        info = connection_of(store_ctx).get_app_data()
        assert info is not None
        if info.state is None:
            reason: str | None = info.refusal or "internal_error"
        else:
            reason = info.state.judge(info, ok, store_ctx)
    except Exception:  # fail closed: a bug, logged (pyOpenSSL's wrapper would defer it)
        log.exception("verify_callback_failed")
        reason = "internal_error"
    if reason is None:
        return 1
    if info is not None:
        info.refusal = info.refusal or reason
    if ok or (info is not None and info.decision is not None):  # Switch's own decision
        _lib.X509_STORE_CTX_set_error(store_ctx, verify_error_for(reason))
    else:
        _lib.X509_STORE_CTX_set_error(
            store_ctx, verify_error_sent_for(_lib.X509_STORE_CTX_get_error(store_ctx)))
    return 0


#: The two callbacks as OpenSSL calls them, made once: every gateway connection shares them.
_SERVER_NAME_CALLBACK = _ffi.callback("int (*)(SSL *, int *, void *)")(_server_name)
_VERIFY_CALLBACK = _ffi.callback(VERIFY_CALLBACK)(_verify)


def build_trust_state(
    config: SwitchConfig, view: TrustView, organisation: Mapping[str, OrganisationMaterial],
    chain: Sequence[x509.Certificate], key: PrivateKey,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> TrustState:
    tenants: dict[str, TenantTrust] = {}
    contexts: dict[str, SSL.Context] = {}
    for name, tenant in config.tenants.items():
        org = organisation.get(name, OrganisationMaterial((), {}))
        prov = view.tenants.get(name)
        issuers = prov.issuers if prov is not None and prov.enabled else ()
        tenants[name] = TenantTrust(
            name=name, identity=tenant.identity,
            organisation_cas={fingerprint(c): c for c in org.cas},
            provisioning_issuers={fingerprint(c): c for c in issuers},
            revoked_serials=org.revoked_serials, crl_next_update=org.crl_next_update,
            revoked_keys=prov.revoked_keys if prov else frozenset(),
            revoked_certificates=prov.revoked_certificates if prov else frozenset(),
            organisation_leaves=org.pinned,
        )
        contexts[name] = server_context(chain, key, client_auth="required",
                                        trust=[*org.cas, *issuers], ciphers=config.tls.ciphers)
    if config.default_tenant is not None:
        entry = server_context(chain, key, client_auth="required",
                               trust=[*tenants[config.default_tenant].organisation_cas.values(),
                                      *tenants[config.default_tenant].provisioning_issuers.values()],
                               ciphers=config.tls.ciphers)
    else:
        entry = server_context(chain, key, client_auth="required", ciphers=config.tls.ciphers)
    anchors = {c.public_bytes(Encoding.DER): (fp, c) for t in tenants.values()
               for fp, c in (*t.organisation_cas.items(), *t.provisioning_issuers.items())}
    state = TrustState(config, view.generation, tenants, contexts, entry, clock, anchors)
    _lib.SSL_CTX_set_tlsext_servername_callback(entry._context, _SERVER_NAME_CALLBACK)
    set_verify_callback(entry, VERIFY_REQUIRED, _VERIFY_CALLBACK)
    return state
