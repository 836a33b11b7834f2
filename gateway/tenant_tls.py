"""Per-tenant TLS on the gateway port: trust state, SNI routing and the in-handshake check.

Theory of operation: a ``TrustState`` is an immutable snapshot built from the config (organisation
CAs and CRLs, read once per config load) and the store (``TrustView``: provisioning issuers while
the service is on, revoked keys and certificates). It holds one ``SSL.Context`` per tenant that
trusts exactly that tenant's anchors and names them in the CertificateRequest. A new snapshot is
built and swapped in whole when the store or the config changes; a connection keeps the snapshot
it was accepted under.

A connection starts on the *entry* context: the default tenant's if one is configured, else a
context that trusts nothing (so a missing or unknown SNI fails the handshake: fail closed). The
SNI callback switches to the tenant's context. ``set_context`` changes the certificate store the
chain is verified against but — the pitfall in STYLE.md — not the verify mode and callback, which
OpenSSL copied from the entry context when the connection was made: so the entry context carries
the one verify callback, which reads the tenant from the connection's ``HandshakeInfo`` (no
per-connection callback objects, whose creation costs memory and CPU). The verify callback
records each certificate of the chain OpenSSL built; at depth 0, if OpenSSL accepted the chain,
it runs ``gateway.peer.check_peer`` and refuses inside the handshake (a TLS alert) when the
decision says no. Whatever the outcome, ``HandshakeInfo`` (the connection's app data) says which
tenant, why it was refused, or the decision with the identity.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

from config.model import SwitchConfig
from config.tls_material import PrivateKey, crl_signer, load_ca_certificates, load_crl
from enroll.trust_view import TrustView
from gateway.peer import Decision, TenantTrust, check_peer, fingerprint
from gateway.tls import new_connection
from gateway.tls_context import server_context
from gateway.tls_refusals import x509_error_reason

VERIFY_REQUIRED = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


@attrs.define(eq=False)
class HandshakeInfo:
    """Per-connection notes made by the TLS callbacks."""

    tenant: str | None = None
    server_name: str | None = None
    refusal: str | None = None
    decision: Decision | None = None
    chain: dict[int, crypto.X509] = attrs.field(factory=dict)


@attrs.frozen
class OrganisationMaterial:
    cas: tuple[x509.Certificate, ...]
    revoked_serials: Mapping[x509.Name, frozenset[int]]
    #: The latest ``nextUpdate`` of each issuer's CRLs (``datetime.max`` for a CRL without one).
    crl_next_update: Mapping[x509.Name, dt.datetime] = attrs.field(factory=dict)


def load_organisation_material(config: SwitchConfig) -> dict[str, OrganisationMaterial]:
    """Read every tenant's organisation CAs and CRLs. A CRL must be signed by one of the tenant's
    CAs (else ValueError: an unsigned revocation list is no list)."""
    material: dict[str, OrganisationMaterial] = {}
    for tenant in config.tenants.values():
        cas = tuple(c for path in tenant.organisation_cas for c in load_ca_certificates(path))
        revoked: dict[x509.Name, set[int]] = {}
        next_update: dict[x509.Name, dt.datetime] = {}
        for path in tenant.organisation_crls:
            crl = load_crl(path)
            if crl_signer(crl, list(cas)) is None:  # as the loader checks; defence in depth
                raise ValueError(f"{path}: the CRL is not signed by an organisation CA of tenant "
                                 f"{tenant.name}")
            revoked.setdefault(crl.issuer, set()).update(r.serial_number for r in crl)
            when = crl.next_update_utc or dt.datetime.max.replace(tzinfo=dt.UTC)
            next_update[crl.issuer] = max(next_update.get(crl.issuer, when), when)
        material[tenant.name] = OrganisationMaterial(
            cas, {k: frozenset(v) for k, v in revoked.items()}, next_update)
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

    def tenant_name_for(self, server_name: str | bytes | None) -> str | None:
        """The tenant an SNI name chooses (``SwitchConfig.tenant_for_hostname``), or None."""
        tenant = self.config.tenant_for_hostname(server_name)
        return tenant.name if tenant is not None else None

    def new_connection(self, sock: trio.socket.SocketType | None = None) -> SSL.Connection:
        """A server connection on the entry context, on ``sock`` (None: memory BIOs)."""
        conn = new_connection(self.entry, sock)
        info = HandshakeInfo(tenant=self.config.default_tenant)
        conn.set_app_data(info)
        conn.set_accept_state()
        return conn

    def _on_server_name(self, conn: SSL.Connection) -> None:
        info: HandshakeInfo = conn.get_app_data()
        raw = conn.get_servername()
        info.server_name = raw.decode("ascii", "replace").lower() if raw else None  # for logs
        tenant = self.tenant_name_for(raw)
        info.tenant = tenant
        if tenant is None:
            info.refusal = "unknown_server_name" if info.server_name else "no_server_name"
            return
        # The verify mode and callback stay the entry context's (set_context keeps them; see the
        # module docstring); the callback finds the tenant in the connection's HandshakeInfo.
        conn.set_context(self.contexts[tenant])

    def verify(self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
        """The verify callback of every gateway connection (set once, on the entry context, so
        no connection pays for a callback of its own): judges against the trust of the tenant
        the connection's SNI chose, and at depth 0 runs ``check_peer``."""
        info: HandshakeInfo = conn.get_app_data()
        try:
            trust = self.tenants.get(info.tenant) if info.tenant else None
            if trust is None:
                info.refusal = info.refusal or "no_server_name"
                return False
            if not ok:
                info.refusal = info.refusal or x509_error_reason(errnum)
                return False
            info.chain[depth] = cert
            if depth != 0:
                return True
            depths = sorted(info.chain)
            chain = [info.chain[d].to_cryptography() for d in depths[:-1]]
            top = info.chain[depths[-1]]
            known = self.anchors.get(crypto.dump_certificate(crypto.FILETYPE_ASN1, top))
            chain.append(known[1] if known else top.to_cryptography())
            decision = check_peer(trust, chain, self.clock(),
                                  anchor_fingerprint=known[0] if known else None)
            info.decision = decision
            if not decision.allowed:
                info.refusal = decision.reason
                return False
            return True
        except Exception:  # fail closed; pyOpenSSL would otherwise defer the exception
            info.refusal = "internal_error"
            return False


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
    entry.set_tlsext_servername_callback(state._on_server_name)
    entry.set_verify(VERIFY_REQUIRED, state.verify)
    return state
