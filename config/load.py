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
    drain_timeout = "10s"               #  -> drain_timeout_s (a stop's one deadline)
    ping_interval = "30s"               #  -> ping_interval_s
    write_timeout = "30s"               #  -> write_timeout_s (a write to an agent or upstream)
    max_connections = 20000             #  at least 1
    max_message_size = "1MiB"           #  -> max_message_bytes
    max_handshakes_per_source = 500     #  connections of one address (IPv6: /64) still in their
                                        #    TLS handshake; more are closed at once
    first_byte_timeout = "5s"           #  -> first_byte_timeout_s: silent after accept this long
    upstream_source_addresses = []      #  local IPs (one family, of this host) to connect to the
                                        #    upstreams from, round robin (nginx's proxy_bind);
                                        #    [] lets the kernel choose

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
from pathlib import Path
from typing import Any

from config.errors import ConfigError, Problem
from config.load_server import (
    read_admin,
    read_api,
    read_enroll,
    read_gateway,
    read_store,
    read_tls,
    read_webhooks,
)
from config.load_tenants import HOSTNAME, TENANT_NAME, read_profile, read_tenant
from config.model import Profile, SwitchConfig, Tenant
from config.tables import IN_PLACE, FileSource, Table, parse_listen

__all__ = ["HOSTNAME", "TENANT_NAME", "FileSource", "load_config", "parse_listen"]


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


def load_config(path: Path, *, source: FileSource = IN_PLACE) -> SwitchConfig:
    """The configuration at ``path``, or ``ConfigError`` listing every problem found. ``source``:
    read the files from a snapshot (see ``FileSource``)."""
    path = path.resolve()
    problems: list[Problem] = []
    data = _parse_file(path, problems, source)
    if data is None:
        raise ConfigError(problems)
    root = Table(data, path, "", problems, source)
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
    tls = read_tls(root)
    gateway, enroll, admin = read_gateway(root), read_enroll(root), read_admin(root)
    store = read_store(root)
    api, webhooks = read_api(root), read_webhooks(root)

    profiles: dict[str, Profile] = {"default": Profile("default")}
    ptable = root.table("profiles")
    if ptable is not None:
        for pname in ptable.data:
            sub = ptable.table(pname)
            if sub is not None:
                profiles[pname] = read_profile(sub, pname)

    tenants: dict[str, Tenant] = {}
    ttable = root.table("tenants")
    if ttable is not None:
        for tname in ttable.data:
            sub = ttable.table(tname)
            if sub is not None:
                tenants[tname] = read_tenant(sub, tname)
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
                tenants[tname] = read_tenant(Table(tdata, file, "", problems, source), tname)
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

