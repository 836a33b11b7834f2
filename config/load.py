"""Loading ``switch.toml`` (and a directory of tenant files) into a ``SwitchConfig``.

Every problem is collected in one pass and reported together with its file and dotted key
(``tenants.demo.hostnames[1]``); the loader never stops at the first. Unknown keys are errors
everywhere. The keys, with their defaults::

    state_dir = "state"                 # required: the SQLite store and issuer keys
    default_tenant = "demo"             # optional: the tenant for connections with no/unknown SNI
                                        #   (without it such connections are refused)
    tenants_dir = "tenants.d"           # optional: one NAME.toml per tenant, holding the tenant
                                        #   table's keys at top level; the file stem is the name
    issuer_key_type = "ec-p256"         # provisioning issuers: "ec-p256" or "ec-p384"
    issuer_validity = "1825d"           # provisioning issuers' validity (at least "1d")

    [tls]                               # the server certificate, exactly one of: PEM files ...
    cert_file = "pki/server.pem"        #   leaf first, then intermediates
    key_file = "pki/server.key"         #   unencrypted PEM, must match the leaf
    # keystore = "pki/server.p12"       # ... or a PKCS#12 keystore with its key and chain
    # keystore_password_file = "pki/server.pass"   # one trailing newline is ignored
    # ciphers = "ECDHE+AESGCM"          # TLS 1.2 suites (OpenSSL cipher string) of every server
                                        #   port; default: forward-secret AEAD suites only

    [gateway]                           # agents' WebSocket sessions over mutual TLS
    listen = "0.0.0.0:4000"             # "host:port" or "[v6-address]:port", port 0..65535
    enabled = true
    handshake_timeout = "10s"           #  -> handshake_timeout_s
    request_timeout = "10s"             #  -> request_timeout_s (the WebSocket upgrade request)
    idle_timeout = "300s"               #  -> idle_timeout_s
    upstream_connect_timeout = "10s"    #  -> upstream_connect_timeout_s
    close_timeout = "5s"                #  -> close_timeout_s
    drain_timeout = "10s"               #  -> drain_timeout_s (graceful shutdown)
    ping_interval = "30s"               #  -> ping_interval_s
    write_timeout = "30s"               #  -> write_timeout_s (a write to an agent or upstream)
    max_connections = 20000             #  at least 1
    max_message_size = "1MiB"           #  -> max_message_bytes
    max_handshakes_per_source = 500     #  connections of one address (IPv6: /64) still in their
                                        #    TLS handshake; more are closed at once
    first_byte_timeout = "5s"           #  -> first_byte_timeout_s: silent after accept this long

    [enroll]                            # EST (RFC 7030)
    listen = "0.0.0.0:9443"
    enabled = true
    request_timeout = "10s"             #  -> request_timeout_s
    max_body_size = "64KiB"             #  -> max_body_bytes
    max_connections = 1000
    max_handshakes_per_source = 50      #  as in [gateway]
    first_byte_timeout = "5s"           #  -> first_byte_timeout_s

    [admin]                             # /healthz, /readyz, /metrics: no TLS, keep on loopback
    listen = "127.0.0.1:9090"
    enabled = true

    [api] and [[webhooks]]: see config.load_api

    [store]                             # absent: SQLite in state_dir (switch.db)
    url = "postgresql://switch@db.example:5432/switch"   # PostgreSQL, shared by every host;
                                        #   a password in the URL is refused: use password_file
    password_file = "secrets/pg.pass"   # optional; one trailing newline is ignored
    issuer_key_passphrase_file = "secrets/issuer-keys.pass"   # required with url: seals the
                                        #   issuers' private keys in the database

    [profiles.NAME]                     # certificate templates; "default" exists even unwritten
    validity = "30d"                    #  -> validity_s
    renew_before = "7d"                 #  -> renew_before_s, shorter than validity
    key_types = ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]   # of model.KEY_TYPES
    subject_pattern = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"   # regex the subject CN must match in
                                        #   full; no "@" by default (see config.check)
    approval = "auto"                   # or "manual"
    unique_subject = false              # true: a CN another key's live certificate holds is refused

    [tenants.NAME]                      # NAME: [a-z0-9][a-z0-9-]{0,62}; not also in tenants_dir
    hostnames = ["demo.switch.test"]    # required, non-empty; SNI names, unique across tenants
    organisation_cas = ["pki/org-ca.pem"]    # PEM CA certificates (CA:true), may be empty
    organisation_crls = []              # PEM or DER CRLs, each signed by one of organisation_cas
    organisation_certs = ["pki/kiosk-7.pem", "sha256:3f:a0:...:9c"]   # single client certificates
                                        #   trusted as they are (PEM files of leaves, or SHA-256
                                        #   fingerprints of leaves: 64 hex digits)
    upstream = "ws://127.0.0.1:8080/"   # ws:// or wss:// with a host
    upstream_ca = "pki/upstream-ca.pem" # optional, wss:// only: PEM certificates the upstream's
                                        #   certificate must chain to (else the system store)
    profile = "default"                 # a profile name
    identity = { rule = "email-san", allow = ["*@example.com"] }   # rule: email-san,
                                        #   common-name or any; allow: glob patterns

Durations take ms, s, m, h, d ("500ms", "1h30m") or a bare number of seconds; sizes take B, KiB,
MiB, GiB (or KB, MB, GB) or a bare number of bytes. Relative paths resolve against the directory
of the file that names them. The files named are opened and checked: certificates and keys must
parse and match, CA files must hold CA certificates, CRLs must parse, a keystore must open with
its password and hold a private key, a CRL must be signed by one of its tenant's organisation CAs.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
from cryptography import x509

from config import ciphers, load_api, tls_material
from config.durations import parse_duration, parse_size
from config.errors import ConfigError, Problem
from config.model import (
    KEY_TYPES,
    AdminSettings,
    ApiSettings,
    EnrollSettings,
    GatewaySettings,
    IdentityRule,
    Listener,
    Profile,
    ServerTLS,
    StoreSettings,
    SwitchConfig,
    Tenant,
    Webhook,
)

T = TypeVar("T")
_MISSING: Any = object()
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
IDENTITY_RULES = ("email-san", "common-name", "any")


@attrs.frozen
class FileSource:
    """Where the loader reads the files a configuration names.

    By default, where they are. ``copies`` (original absolute path -> copy) makes the loader read
    every file, the config file itself and the tenant files included, from a snapshot instead
    (``config.snapshot``): the model then names the copies, except ``SwitchConfig.path``,
    ``Tenant.source``, ``state_dir``, ``tenants_dir`` and the ``[store]`` files (read once, when a
    process starts, like the store itself), which keep naming the originals. Any other file the
    snapshot does not hold is a problem, never read from its original place.
    """

    copies: Mapping[Path, Path] | None = None

    def has(self, path: Path) -> bool:
        return self.copies is None or path in self.copies

    def locate(self, path: Path) -> Path:
        if self.copies is None:
            return path
        return self.copies.get(path, path)

    def tenant_files(self, directory: Path) -> list[Path]:
        if self.copies is None:
            return sorted(directory.glob("*.toml"))
        return sorted(p for p in self.copies if p.parent == directory and p.suffix == ".toml")


class _Table:
    """One TOML table being read: typed getters that record problems instead of raising, and
    ``finish()`` that reports keys nobody asked for."""

    def __init__(self, data: Mapping[str, Any], file: Path, prefix: str, problems: list[Problem],
                 source: FileSource = FileSource()) -> None:
        self.data = data
        self.file = file
        self.prefix = prefix
        self.problems = problems
        self.source = source
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        if not name:
            return self.prefix
        if name.startswith("["):
            return f"{self.prefix}{name}"
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.key(name), message))

    def raw(self, name: str, required: bool = False) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                self.error(name, "is required")
            return _MISSING
        return self.data[name]

    def typed(self, name: str, kind: type[T] | tuple[type, ...], what: str, default: T,
              required: bool = False) -> T:
        value = self.raw(name, required)
        if value is _MISSING:
            return default
        if isinstance(value, bool) and kind is not bool:
            self.error(name, f"expected {what}, got a boolean")
            return default
        if not isinstance(value, kind):
            self.error(name, f"expected {what}, got {_tname(value)}")
            return default
        return value  # type: ignore[return-value]

    def string(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        return self.typed(name, str, "a string", default, required)

    def boolean(self, name: str, default: bool) -> bool:
        return self.typed(name, bool, "true or false", default)

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.typed(name, int, "an integer", default)
        if value < minimum:
            self.error(name, f"must be at least {minimum}")
            return default
        return value

    def strings(self, name: str, required: bool = False) -> tuple[str, ...]:
        value = self.raw(name, required)
        if value is _MISSING:
            return ()
        if not isinstance(value, list):
            self.error(name, f"expected a list of strings, got {_tname(value)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.error(f"{name}[{i}]", f"expected a string, got {_tname(item)}")
        return tuple(out)

    def convert(self, name: str, parse: Callable[[Any], T], default: T) -> T:
        value = self.raw(name)
        if value is _MISSING:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self.error(name, str(exc))
            return default

    def duration(self, name: str, default: float) -> float:
        return self.convert(name, parse_duration, default)

    def size(self, name: str, default: int) -> int:
        return self.convert(name, parse_size, default)

    def path(self, name: str, required: bool = False) -> Path | None:
        value = self.string(name, required=required)
        if value is not None and not value.strip():
            self.error(name, "must name a file or directory, not an empty string")
            return None
        return self.resolve(value) if value else None

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.file.parent / path).resolve()

    def located(self, name: str, path: Path) -> Path:
        """``path`` (a file the config names, at ``name``) where the source holds it."""
        if not self.source.has(path):
            self.error(name, f"{path} is not in the configuration snapshot (the configuration "
                       "changed while the snapshot was taken)")
            return path
        return self.source.locate(path)

    def table(self, name: str, required: bool = False) -> _Table | None:
        value = self.raw(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.error(name, f"expected a table, got {_tname(value)}")
            return None
        return _Table(value, self.file, self.key(name), self.problems, self.source)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.error(name, "unknown key")


def _tname(value: object) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def parse_listen(value: object) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ValueError(f"expected \"host:port\", got {_tname(value)}")
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", value)
    if not match:
        raise ValueError(f"bad listen address {value!r}: use \"host:port\" or \"[v6-address]:port\"")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"bad port {port} in {value!r}: ports go from 0 to 65535")
    return host, port


def _listener(table: _Table | None, default: Listener) -> Listener:
    if table is None:
        return default
    host, port = table.convert("listen", parse_listen, (default.host, default.port))
    return Listener(host, port, table.boolean("enabled", default.enabled))


def _read_gateway(root: _Table) -> GatewaySettings:
    t = root.table("gateway")
    d = GatewaySettings()
    if t is None:
        return d
    settings = GatewaySettings(
        listen=_listener(t, d.listen),
        handshake_timeout_s=t.duration("handshake_timeout", d.handshake_timeout_s),
        request_timeout_s=t.duration("request_timeout", d.request_timeout_s),
        idle_timeout_s=t.duration("idle_timeout", d.idle_timeout_s),
        upstream_connect_timeout_s=t.duration("upstream_connect_timeout", d.upstream_connect_timeout_s),
        close_timeout_s=t.duration("close_timeout", d.close_timeout_s),
        drain_timeout_s=t.duration("drain_timeout", d.drain_timeout_s),
        ping_interval_s=t.duration("ping_interval", d.ping_interval_s),
        write_timeout_s=t.duration("write_timeout", d.write_timeout_s),
        max_connections=t.integer("max_connections", d.max_connections, minimum=1),
        max_message_bytes=t.size("max_message_size", d.max_message_bytes),
        max_handshakes_per_source=t.integer("max_handshakes_per_source",
                                            d.max_handshakes_per_source, minimum=1),
        first_byte_timeout_s=_positive(t, "first_byte_timeout", d.first_byte_timeout_s),
    )
    t.finish()
    return settings


def _read_enroll(root: _Table) -> EnrollSettings:
    t = root.table("enroll")
    d = EnrollSettings()
    if t is None:
        return d
    settings = EnrollSettings(
        listen=_listener(t, d.listen),
        request_timeout_s=t.duration("request_timeout", d.request_timeout_s),
        idle_timeout_s=t.duration("idle_timeout", d.idle_timeout_s),
        max_body_bytes=t.size("max_body_size", d.max_body_bytes),
        max_connections=t.integer("max_connections", d.max_connections, minimum=1),
        max_handshakes_per_source=t.integer("max_handshakes_per_source",
                                            d.max_handshakes_per_source, minimum=1),
        first_byte_timeout_s=_positive(t, "first_byte_timeout", d.first_byte_timeout_s),
    )
    t.finish()
    return settings


def _positive(t: _Table, name: str, default: float) -> float:
    """A duration that must be longer than zero."""
    value = t.duration(name, default)
    if value <= 0:
        t.error(name, "must be longer than zero")
        return default
    return value


def _read_admin(root: _Table) -> AdminSettings:
    t = root.table("admin")
    if t is None:
        return AdminSettings()
    settings = AdminSettings(listen=_listener(t, AdminSettings().listen))
    t.finish()
    return settings


def _read_api(root: _Table) -> ApiSettings:
    t = root.table("api")
    if t is None:
        return ApiSettings()
    return load_api.read_api(t, _listener(t, ApiSettings().listen))


def _read_webhooks(root: _Table) -> tuple[Webhook, ...]:
    value = root.raw("webhooks")
    if value is _MISSING:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        root.error("webhooks", "expected [[webhooks]] tables")
        return ()
    hooks = [load_api.read_webhook(_Table(v, root.file, f"webhooks[{i}]", root.problems,
                                          root.source), i) for i, v in enumerate(value)]
    load_api.check_webhook_names(hooks, lambda i, m: root.error(f"webhooks[{i}].name", m))
    return tuple(h for h in hooks if h is not None)


def _read_tls(root: _Table) -> ServerTLS:
    """Exactly one of (cert_file + key_file) or (keystore + keystore_password_file), and the
    files must open, parse and match."""
    t = root.table("tls", required=True)
    if t is None:
        return ServerTLS()
    before = len(t.problems)
    files = {name: None if (file := t.path(name)) is None else t.located(name, file)
             for name in ("cert_file", "key_file", "keystore", "keystore_password_file")}
    tls = ServerTLS(files["cert_file"], files["key_file"], files["keystore"],
                    files["keystore_password_file"])
    if len(t.problems) == before:  # the keys are well typed: check the form and the files
        try:
            tls_material.load_server_credentials(tls, config_file=t.file)
        except ConfigError as exc:
            t.problems.extend(exc.problems)
    tls = attrs.evolve(tls, ciphers=t.convert("ciphers", _cipher_string, None))
    t.finish()
    return tls


def _cipher_string(value: object) -> str:
    """``[tls] ciphers``: an OpenSSL cipher string that selects at least one TLS 1.2 suite."""
    if not isinstance(value, str):
        raise ValueError(f"expected an OpenSSL cipher string, got {_tname(value)}")
    ciphers.expand(value)
    return value


def _store_file(t: _Table, name: str, required: bool = False) -> Path | None:
    """A secret file of ``[store]``: it must hold something (one trailing newline ignored).
    Like ``state_dir``, read where it is, never from a snapshot: the store is opened once, when
    a process starts (a worker too), and ``[store]`` takes effect only on a restart."""
    path = t.path(name, required=required)
    if path is None:
        return None
    try:
        if not tls_material.read_password_file(path):
            t.error(name, f"{path} is empty")
    except ValueError as exc:
        t.error(name, str(exc))
    return path


def _read_store(root: _Table) -> StoreSettings:
    """``[store]``: absent, SQLite in ``state_dir``; with ``url``, PostgreSQL."""
    t = root.table("store")
    if t is None:
        return StoreSettings()
    url = t.string("url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            t.error("url", f"must be a postgresql:// URL, not {url!r} (leave [store] out for "
                    "SQLite in state_dir)")
        elif parts.password is not None or "password=" in parts.query:
            t.error("url", "must not hold a password (it would show wherever the URL does): put "
                    "it in [store] password_file")
            url = None
    password_file = _store_file(t, "password_file")
    passphrase_file = _store_file(t, "issuer_key_passphrase_file", required=url is not None)
    if url is None and password_file is not None:
        t.error("password_file", "is for a PostgreSQL store: set [store] url too")
    t.finish()
    return StoreSettings(url, password_file, passphrase_file)


def _read_profile(t: _Table, name: str) -> Profile:
    d = Profile(name)
    validity = t.duration("validity", float(d.validity_s))
    renew = t.duration("renew_before", float(d.renew_before_s))
    key_types = t.strings("key_types")
    if "key_types" in t.data and isinstance(t.data["key_types"], list) and not t.data["key_types"]:
        t.error("key_types", "needs at least one key type (an empty list would refuse every request)")
    key_types = key_types or d.key_types
    for i, kt in enumerate(key_types):
        if kt not in KEY_TYPES:
            t.error(f"key_types[{i}]", f"unknown key type {kt!r} (known: {', '.join(KEY_TYPES)})")
    pattern = t.string("subject_pattern", d.subject_pattern) or d.subject_pattern
    try:
        re.compile(pattern)
    except re.error as exc:
        t.error("subject_pattern", f"not a valid regular expression: {exc}")
    approval = t.string("approval", d.approval)
    unique_subject = t.boolean("unique_subject", d.unique_subject)
    if approval not in ("auto", "manual"):
        t.error("approval", f"must be \"auto\" or \"manual\", not {approval!r}")
        approval = d.approval
    if validity <= 0:
        t.error("validity", "must be longer than zero")
    elif renew >= validity:
        t.error("renew_before", "must be shorter than validity")
    t.finish()
    return Profile(name, int(validity), int(renew), key_types, pattern,
                   approval, unique_subject)  # type: ignore[arg-type]


def _read_identity(t: _Table) -> IdentityRule:
    value = t.raw("identity")
    if value is _MISSING:
        return IdentityRule()
    if not isinstance(value, dict):
        t.error("identity", f"expected a table such as {{ rule = \"email-san\" }}, got {_tname(value)}")
        return IdentityRule()
    it = _Table(value, t.file, t.key("identity"), t.problems, t.source)
    rule = it.string("rule", "email-san")
    if rule not in IDENTITY_RULES:
        it.error("rule", f"unknown identity rule {rule!r} (known: {', '.join(IDENTITY_RULES)})")
        rule = "email-san"
    allow = it.strings("allow")
    it.finish()
    return IdentityRule(rule, allow)  # type: ignore[arg-type]


def _check_upstream(url: str) -> None:
    """A ws:// or wss:// URL with a host (and, if given, a port from 1 to 65535)."""
    problem = f"{url!r} must be a ws:// or wss:// URL with a host, e.g. \"ws://127.0.0.1:8080/\""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{problem} ({exc})") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(problem)
    if port == 0:
        raise ValueError(f"{url!r}: port 0 cannot be connected to")


def _read_tenant(t: _Table, name: str) -> Tenant:
    if not TENANT_NAME.fullmatch(name):
        t.error("", "a tenant name has 1-63 characters: lower-case letters, digits and '-', "
                "starting with a letter or digit")
    hostnames = t.strings("hostnames", required=True)
    if "hostnames" in t.data and isinstance(t.data["hostnames"], list) and not hostnames:
        t.error("hostnames", "needs at least one SNI name")
    for i, host in enumerate(hostnames):
        if not HOSTNAME.fullmatch(host.lower().rstrip(".")):
            t.error(f"hostnames[{i}]", f"{host!r} is not a valid DNS name")
    cas = tuple(t.located(f"organisation_cas[{i}]", t.resolve(p))
                for i, p in enumerate(t.strings("organisation_cas")))
    ca_certs: list[x509.Certificate] = []
    cas_loaded = True
    for i, path in enumerate(cas):
        try:
            ca_certs += tls_material.load_ca_certificates(path)
        except ValueError as exc:
            t.error(f"organisation_cas[{i}]", str(exc))
            cas_loaded = False
    crls = tuple(t.located(f"organisation_crls[{i}]", t.resolve(p))
                 for i, p in enumerate(t.strings("organisation_crls")))
    for i, path in enumerate(crls):
        try:
            crl = tls_material.load_crl(path)
        except ValueError as exc:
            t.error(f"organisation_crls[{i}]", str(exc))
            continue
        # Only when every CA file loaded: a CA that did not is reported already.
        if ca_certs and cas_loaded and tls_material.crl_signer(crl, ca_certs) is None:
            t.error(f"organisation_crls[{i}]", f"{path}: the CRL (issuer "
                    f"{crl.issuer.rfc4514_string()}) is not signed by an organisation CA of "
                    f"tenant {name}: a list no trusted CA signed revokes nothing")
    if crls and not cas:
        t.error("organisation_crls", "CRLs need organisation_cas to apply to")
    pinned_files, pinned_sha256 = _read_pinned(t)
    upstream = t.string("upstream")
    if upstream is not None:
        try:
            _check_upstream(upstream)
        except ValueError as exc:
            t.error("upstream", str(exc))
    upstream_ca = t.path("upstream_ca")
    if upstream_ca is not None:
        upstream_ca = t.located("upstream_ca", upstream_ca)
        try:
            tls_material.load_pem_certificates(upstream_ca)
        except ValueError as exc:
            t.error("upstream_ca", str(exc))
        if not (upstream or "").lower().startswith("wss://"):
            t.error("upstream_ca", "applies to a wss:// upstream only")
    identity = _read_identity(t)
    profile = t.string("profile", "default") or "default"
    t.finish()
    return Tenant(name, tuple(h.lower().rstrip(".") for h in hostnames), cas, crls, identity,
                  upstream, profile, t.file, upstream_ca, pinned_files, pinned_sha256)


def _read_pinned(t: _Table) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """``organisation_certs``: each entry a SHA-256 fingerprint of a leaf, or a PEM file of
    leaves (none a CA)."""
    files: list[Path] = []
    fingerprints: list[str] = []
    for i, entry in enumerate(t.strings("organisation_certs")):
        key = f"organisation_certs[{i}]"
        try:
            fingerprint = tls_material.parse_sha256_fingerprint(entry)
        except ValueError as exc:
            t.error(key, str(exc))
            continue
        if fingerprint is not None:
            fingerprints.append(fingerprint)
            continue
        if not entry.strip():
            t.error(key, "must name a PEM file or be a SHA-256 fingerprint, not an empty string")
            continue
        path = t.located(key, t.resolve(entry))
        try:
            tls_material.load_client_certificates(path)
        except ValueError as exc:
            t.error(key, str(exc))
            continue
        files.append(path)
    return tuple(files), tuple(dict.fromkeys(fingerprints))


_TOML_AT = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def _parse_file(path: Path, problems: list[Problem], source: FileSource) -> dict[str, Any] | None:
    """The TOML document at ``path`` (read where ``source`` holds it), or None with a problem
    (unreadable, not UTF-8, or a syntax error given with its line and column)."""
    if not source.has(path):
        problems.append(Problem(path, "", "not in the configuration snapshot"))
        return None
    try:
        text = source.locate(path).read_bytes().decode("utf-8")
    except OSError as exc:
        problems.append(Problem(path, "", f"cannot read: {exc.strerror or exc}"))
        return None
    except UnicodeDecodeError as exc:
        problems.append(Problem(path, "", f"not UTF-8 text (byte {exc.start})"))
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _TOML_AT.search(message)
        if at is None:
            where = ""
        elif at.group(1):
            where = f" at line {at.group(1)}, column {at.group(2)}"
        else:  # tomllib gives no line for an unterminated construct: it is the last line
            where = f" at line {text.count(chr(10)) + (0 if text.endswith(chr(10)) else 1)} (end of file)"
        problems.append(Problem(path, "", f"not valid TOML{where}: {_TOML_AT.sub('', message)}"))
        return None


def load_config(path: Path, *, source: FileSource = FileSource()) -> SwitchConfig:
    """The configuration at ``path``, or ``ConfigError`` listing every problem found. ``source``:
    read the files from a snapshot (see ``FileSource``)."""
    path = path.resolve()
    problems: list[Problem] = []
    data = _parse_file(path, problems, source)
    if data is None:
        raise ConfigError(problems)
    root = _Table(data, path, "", problems, source)
    state_dir = root.path("state_dir", required=True)
    default_tenant = root.string("default_tenant")
    tenants_dir = root.path("tenants_dir")
    issuer_key_type = root.string("issuer_key_type", "ec-p256")
    if issuer_key_type not in ("ec-p256", "ec-p384"):
        root.error("issuer_key_type", f"must be \"ec-p256\" or \"ec-p384\", not {issuer_key_type!r}")
        issuer_key_type = "ec-p256"
    issuer_validity = root.duration("issuer_validity", 5 * 365 * 86400.0)
    if issuer_validity < 86400:
        root.error("issuer_validity", "must be at least one day (\"1d\")")
        issuer_validity = 5 * 365 * 86400.0
    tls = _read_tls(root)
    gateway, enroll, admin = _read_gateway(root), _read_enroll(root), _read_admin(root)
    store = _read_store(root)
    api, webhooks = _read_api(root), _read_webhooks(root)

    profiles: dict[str, Profile] = {"default": Profile("default")}
    ptable = root.table("profiles")
    if ptable is not None:
        for pname in ptable.data:
            sub = ptable.table(pname)
            if sub is not None:
                profiles[pname] = _read_profile(sub, pname)

    tenants: dict[str, Tenant] = {}
    ttable = root.table("tenants")
    if ttable is not None:
        for tname in ttable.data:
            sub = ttable.table(tname)
            if sub is not None:
                tenants[tname] = _read_tenant(sub, tname)
    if tenants_dir is not None:
        if source.copies is None and not tenants_dir.is_dir():
            root.error("tenants_dir", f"{tenants_dir} is not a directory")
        else:
            for file in source.tenant_files(tenants_dir):
                tdata = _parse_file(file, problems, source)
                if tdata is None:
                    continue
                tname = file.stem
                if tname in tenants:
                    problems.append(Problem(file, "", f"tenant {tname!r} is also defined in "
                                            f"{tenants[tname].source}"))
                    continue
                tenants[tname] = _read_tenant(_Table(tdata, file, "", problems, source), tname)
    root.finish()

    owners: dict[str, tuple[Tenant, int]] = {}
    for tenant in tenants.values():
        for i, host in enumerate(tenant.hostnames):
            key = _tenant_key(tenant, f"hostnames[{i}]", path)
            if host not in owners:
                owners[host] = (tenant, i)
                continue
            other, j = owners[host]
            if other is tenant:
                message = f"{host!r} is listed twice (also hostnames[{j}])"
            else:
                message = (f"{host!r} is claimed by two tenants: {tenant.name!r} and {other.name!r} "
                           f"({other.source}: {_tenant_key(other, f'hostnames[{j}]', path)})")
            problems.append(Problem(tenant.source or path, key, message))
        if tenant.profile not in profiles:
            problems.append(Problem(tenant.source or path, _tenant_key(tenant, "profile", path),
                                    f"unknown profile {tenant.profile!r} (known: {', '.join(sorted(profiles))})"))
    if default_tenant is not None and default_tenant not in tenants:
        root.error("default_tenant", f"no tenant named {default_tenant!r}")

    # What could be read, with defaults where a value was wrong: `config check` looks for risky
    # settings in it even when the configuration does not load.
    partial = None if state_dir is None else SwitchConfig(
        path=path, state_dir=state_dir, tls=tls, gateway=gateway, enroll=enroll, admin=admin,
        store=store, api=api, webhooks=webhooks, profiles=profiles, tenants=tenants,
        default_tenant=default_tenant if default_tenant in tenants else None,
        tenants_dir=tenants_dir, issuer_key_type=issuer_key_type,  # type: ignore[arg-type]
        issuer_validity_s=int(issuer_validity),
    )
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems, partial=partial)
    assert partial is not None
    return partial


def _tenant_key(tenant: Tenant, key: str, main: Path) -> str:
    return key if tenant.source and tenant.source != main else f"tenants.{tenant.name}.{key}"

