"""The configuration model: frozen values built by ``config.load``.

Every duration is held in seconds (``*_s``), every size in bytes (``*_bytes``). Paths are absolute,
resolved against the directory of the file that named them. A loaded ``SwitchConfig`` is never
mutated: a reload builds a new one and swaps it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs

from config.hostnames import host_key

#: Key types a profile may allow, as written in config.
KEY_TYPES: tuple[str, ...] = ("ec-p256", "ec-p384", "ec-p521", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519")

Approval = Literal["auto", "manual"]
IdentityRuleKind = Literal["email-san", "common-name", "any"]


@attrs.frozen
class Listener:
    """An address to listen on. ``enabled = false`` turns the listener off."""

    host: str
    port: int
    enabled: bool = True

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


@attrs.frozen
class GatewaySettings:
    listen: Listener = Listener("0.0.0.0", 4000)
    handshake_timeout_s: float = 10.0
    request_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    upstream_connect_timeout_s: float = 10.0
    close_timeout_s: float = 5.0
    drain_timeout_s: float = 10.0
    ping_interval_s: float = 30.0
    #: A write to an agent or an upstream that makes no progress for this long ends the session.
    write_timeout_s: float = 30.0
    max_connections: int = 20000
    max_message_bytes: int = 1 << 20
    #: Connections from one source (an IPv4 address, an IPv6 /64) still in their TLS handshake;
    #: over it a new connection from that source is closed at once. Live sessions do not count.
    max_handshakes_per_source: int = 500
    #: A connection that sends no byte for this long after it was accepted is closed.
    first_byte_timeout_s: float = 5.0
    #: Local IP addresses (one family) the upstream connections are opened from, round robin
    #: (nginx's ``proxy_bind``): one address opens at most the ephemeral port range's
    #: connections to one upstream address and port. Empty: the kernel chooses.
    upstream_source_addresses: tuple[str, ...] = ()


@attrs.frozen
class EnrollSettings:
    listen: Listener = Listener("0.0.0.0", 9443)
    request_timeout_s: float = 10.0
    #: After the handshake and between requests: a connection silent this long is closed.
    idle_timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024
    max_connections: int = 1000
    #: As ``GatewaySettings.max_handshakes_per_source``, on the enroll port.
    max_handshakes_per_source: int = 50
    first_byte_timeout_s: float = 5.0


@attrs.frozen
class AdminSettings:
    listen: Listener = Listener("127.0.0.1", 9090)


@attrs.frozen
class ApiSettings:
    """The admin API (and the console built on it): HTTPS with the server certificate, operators
    authenticated by bearer token or console session (docs/api.md, docs/console.md)."""

    listen: Listener = Listener("127.0.0.1", 9444)
    #: The TLS handshake, and each read of a request once it started.
    request_timeout_s: float = 10.0
    #: A kept-alive connection with no request for this long is closed.
    idle_timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024
    #: The request line and headers together.
    max_header_bytes: int = 16 * 1024
    #: The security admin console at ``/`` (its pages, sign-in and session cookie).
    console: bool = True
    #: A console session unused this long ends (OWASP's guidance for sensitive applications:
    #: 15 to 30 minutes).
    session_idle_timeout_s: float = 30 * 60.0
    #: A console session ends this long after sign-in, however much it is used (a working day).
    session_lifetime_s: float = 8 * 3600.0


#: What a webhook may subscribe to (docs/api.md, "Webhooks").
WEBHOOK_EVENTS: tuple[str, ...] = (
    "request.pending", "request.approved", "request.rejected",
    "key.created", "key.renamed", "key.suspended", "key.reactivated", "key.revoked",
    "certificate.revoked", "service.enabled", "service.disabled", "issuer.renewed",
)


@attrs.frozen
class Webhook:
    """One ``[[webhooks]]`` entry: events POSTed as JSON to ``url``, signed with HMAC-SHA256
    under the secret in ``secret_file``."""

    name: str
    url: str
    secret_file: Path
    events: tuple[str, ...]
    #: Each delivery attempt (connect, send, answer).
    timeout_s: float = 5.0
    #: PEM CA certificates an ``https://`` receiver must chain to (else the system store).
    ca_file: Path | None = None


@attrs.frozen
class ServerTLS:
    """The server certificate: PEM files (``cert_file`` + ``key_file``) or a PKCS#12 keystore
    (``keystore`` + ``keystore_password_file``). Exactly one of the two forms is set."""

    cert_file: Path | None = None
    key_file: Path | None = None
    keystore: Path | None = None
    keystore_password_file: Path | None = None
    #: The TLS 1.2 cipher suites of every server context (an OpenSSL cipher string); None:
    #: forward-secret AEAD suites only (``config.ciphers.DEFAULT_TLS12_CIPHERS``).
    ciphers: str | None = None


@attrs.frozen
class StoreSettings:
    """Where the state lives. No ``url``: SQLite in ``state_dir`` (the default). A
    ``postgresql://`` URL (never with a password in it): PostgreSQL, shared by every host that
    names it, with the password in ``password_file`` (optional: the server may trust the host
    or use a client certificate) and the passphrase that seals issuer keys in
    ``issuer_key_passphrase_file`` (required with PostgreSQL)."""

    url: str | None = None
    password_file: Path | None = None
    issuer_key_passphrase_file: Path | None = None

    @property
    def engine(self) -> str:
        return "sqlite" if self.url is None else "postgresql"


@attrs.frozen
class IdentityRule:
    """How an organisation certificate names its agent.

    ``email-san`` (default, seed 003): exactly one RFC 822 SAN; ``allow`` holds glob patterns
    (``*@example.com``) the address must match when non-empty. ``common-name``: the subject CN,
    matched against ``allow`` the same way. ``any``: the chain alone decides (a risky setting).
    """

    kind: IdentityRuleKind = "email-san"
    allow: tuple[str, ...] = ()


#: The default subject rule: no ``@``, so that a provisioned name never looks like the e-mail
#: address an organisation certificate is known by (the two namespaces stay apart).
DEFAULT_SUBJECT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


@attrs.frozen
class Profile:
    """A named certificate template (seed 002)."""

    name: str
    validity_s: int = 30 * 86400
    renew_before_s: int = 7 * 86400
    key_types: tuple[str, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
    #: Regular expression the requested subject common name must match in full.
    subject_pattern: str = DEFAULT_SUBJECT_PATTERN
    approval: Approval = "auto"
    #: A CN held by a live certificate of another provisioning key is refused (``subject_taken``).
    unique_subject: bool = False


@attrs.frozen
class Tenant:
    name: str
    hostnames: tuple[str, ...]
    organisation_cas: tuple[Path, ...] = ()
    organisation_crls: tuple[Path, ...] = ()
    identity: IdentityRule = IdentityRule()
    upstream: str | None = None
    profile: str = "default"
    #: The file this tenant was defined in (the main config or a file in ``tenants_dir``).
    source: Path | None = None
    #: PEM certificates a ``wss://`` upstream's certificate must chain to (instead of the
    #: system trust store).
    upstream_ca: Path | None = None
    #: ``organisation_certs`` files: PEM client certificates trusted one by one (exactly these
    #: leaves, whoever issued them).
    organisation_certs: tuple[Path, ...] = ()
    #: ``organisation_certs`` fingerprints: SHA-256 of further such leaves, lower-case hex.
    organisation_cert_sha256: tuple[str, ...] = ()

    @property
    def uses_organisation_cas(self) -> bool:
        """"Use certificates provisioned by my organisation" is on when CAs or single client
        certificates (seed 000: "upload your CA certificates or specific client
        certificates") are configured."""
        return bool(self.organisation_cas or self.organisation_certs
                    or self.organisation_cert_sha256)


@attrs.frozen
class SwitchConfig:
    path: Path
    state_dir: Path
    tls: ServerTLS
    gateway: GatewaySettings = GatewaySettings()
    enroll: EnrollSettings = EnrollSettings()
    admin: AdminSettings = AdminSettings()
    store: StoreSettings = StoreSettings()
    api: ApiSettings = ApiSettings()
    webhooks: tuple[Webhook, ...] = ()
    profiles: Mapping[str, Profile] = attrs.field(factory=dict)
    tenants: Mapping[str, Tenant] = attrs.field(factory=dict)
    default_tenant: str | None = None
    tenants_dir: Path | None = None
    #: The issuer key algorithm used when the provisioning service creates a tenant's CA.
    issuer_key_type: Literal["ec-p256", "ec-p384"] = "ec-p256"
    #: Validity of a tenant's provisioning issuer.
    issuer_validity_s: int = 5 * 365 * 86400

    #: Every tenant's hostnames (as ``host_key`` writes them) -> the tenant: built once per
    #: configuration, so a lookup per handshake or request is one dictionary access.
    _by_hostname: Mapping[str, Tenant] = attrs.field(
        init=False, eq=False, repr=False,
        default=attrs.Factory(lambda self: _hostname_map(self.tenants), takes_self=True))

    def tenant_for_name(self, name: str | bytes | None, *, port_allowed: bool = False
                        ) -> Tenant | None:
        """The tenant whose ``hostnames`` holds ``name`` once normalised (``host_key``: case,
        trailing dot, IPv6 brackets, and a ``:port`` when ``port_allowed``), else None; never
        the default tenant. A malformed or empty name names no tenant."""
        key = host_key(name, port_allowed=port_allowed)
        return None if key is None else self._by_hostname.get(key)

    def tenant_for_hostname(self, hostname: str | bytes | None) -> Tenant | None:
        """The tenant an SNI name chooses: ``tenant_for_name``, else the ``default_tenant``,
        else None: the caller must refuse (fail closed)."""
        tenant = self.tenant_for_name(hostname)
        if tenant is None and self.default_tenant is not None:
            return self.tenants.get(self.default_tenant)
        return tenant

    def profile_for(self, tenant: Tenant, override: str | None = None) -> Profile | None:
        """The profile for ``tenant``, or the per-key ``override`` when one is set; None when
        the configuration does not define it (a key in the store may name a profile removed
        since: the caller refuses, ``config check`` and reload report it)."""
        return self.profiles.get(override or tenant.profile)


def _hostname_map(tenants: Mapping[str, Tenant]) -> dict[str, Tenant]:
    """Hostname -> tenant; a name listed twice (which ``config.load`` refuses) goes to the first."""
    found: dict[str, Tenant] = {}
    for tenant in tenants.values():
        for hostname in tenant.hostnames:
            key = host_key(hostname)
            if key is not None:
                found.setdefault(key, tenant)
    return found
