"""Checks for risky settings in a configuration that loads (``switch config check``).

``check_config`` reads the files the config names and is otherwise pure; ``now`` is passed in. It
returns problems rather than raising: warnings for risky settings, errors for things that will
fail at run time (an expired certificate). The loader has already refused anything malformed.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from config import tls_material
from config.errors import ConfigError, Problem, format_problems
from config.model import SwitchConfig, Tenant

#: Certificates expiring within this window are reported (a month leaves time to renew).
EXPIRY_WARNING = dt.timedelta(days=30)
#: NIST SP 800-131A: RSA keys under 2048 bits are disallowed for signatures.
MIN_RSA_BITS = 2048

__all__ = ["EXPIRY_WARNING", "MIN_RSA_BITS", "check_config", "format_problems"]


def _cert_problems(cert: x509.Certificate, file: Path, key: str, now: dt.datetime) -> list[Problem]:
    out: list[Problem] = []
    subject = cert.subject.rfc4514_string()
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        out.append(Problem(file, key, f"{subject} expired on {not_after:%Y-%m-%d}"))
    elif not_after - now <= EXPIRY_WARNING:
        days = (not_after - now).days
        out.append(Problem(file, key, f"{subject} expires in {days} day(s), on {not_after:%Y-%m-%d}",
                           "warning"))
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        out.append(Problem(file, key, f"{subject} has a {public.key_size}-bit RSA key; use at "
                           f"least {MIN_RSA_BITS} bits", "warning"))
    return out


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]


def _covers(pattern: str, hostname: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard standing for exactly one left-most label."""
    if pattern == hostname:
        return True
    if pattern.startswith("*.") and "." in hostname:
        return hostname.split(".", 1)[1] == pattern[2:]
    return False


def _loose_permissions(path: Path | None) -> bool:
    """True when ``path`` exists and is readable or writable by group or others."""
    if path is None:
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(stat.S_IMODE(mode) & 0o077)


def _tenant_where(cfg: SwitchConfig, tenant: Tenant) -> tuple[Path, str]:
    if tenant.source is not None and tenant.source != cfg.path:
        return tenant.source, ""
    return cfg.path, f"tenants.{tenant.name}."


def _server_problems(cfg: SwitchConfig, now: dt.datetime) -> list[Problem]:
    main = cfg.path
    tls_key = "tls.keystore" if cfg.tls.keystore else "tls.cert_file"
    try:
        chain, key = tls_material.load_server_credentials(cfg.tls, config_file=main)
    except ConfigError as exc:
        return list(exc.problems)
    problems: list[Problem] = []
    for cert in chain:
        problems += _cert_problems(cert, main, tls_key, now)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        problems.append(Problem(main, tls_key, f"the server key is {key.key_size}-bit RSA; use "
                                f"at least {MIN_RSA_BITS} bits", "warning"))
    names = _dns_names(chain[0])
    for tenant in cfg.tenants.values():
        file, prefix = _tenant_where(cfg, tenant)
        for i, host in enumerate(tenant.hostnames):
            if not any(_covers(n, host) for n in names):
                problems.append(Problem(file, f"{prefix}hostnames[{i}]",
                                        f"the server certificate does not name {host!r}: agents "
                                        "that verify the server's name will refuse it", "warning"))
    for field in ("key_file", "keystore", "keystore_password_file"):
        path = getattr(cfg.tls, field)
        if _loose_permissions(path):
            problems.append(Problem(main, f"tls.{field}", f"{path} is readable by other users: "
                                    "chmod 600 it", "warning"))
    return problems


def _tenant_problems(cfg: SwitchConfig, tenant: Tenant, now: dt.datetime) -> list[Problem]:
    file, prefix = _tenant_where(cfg, tenant)
    problems: list[Problem] = []
    for i, path in enumerate(tenant.organisation_cas):
        try:
            certs = tls_material.load_ca_certificates(path)
        except ValueError as exc:
            problems.append(Problem(file, f"{prefix}organisation_cas[{i}]", str(exc)))
            continue
        for cert in certs:
            problems += _cert_problems(cert, file, f"{prefix}organisation_cas[{i}]", now)
    for i, path in enumerate(tenant.organisation_crls):
        try:
            crl = tls_material.load_crl(path)
        except ValueError as exc:
            problems.append(Problem(file, f"{prefix}organisation_crls[{i}]", str(exc)))
            continue
        next_update = crl.next_update_utc
        if next_update is not None and next_update <= now:
            problems.append(Problem(file, f"{prefix}organisation_crls[{i}]",
                                    f"{path} is stale: its next update was due on "
                                    f"{next_update:%Y-%m-%d}; fetch a fresh CRL", "warning"))
    if tenant.identity.kind == "any":
        problems.append(Problem(file, f"{prefix}identity.rule",
                                "rule \"any\" lets every certificate from the organisation CAs "
                                "in, whatever it names", "warning"))
    if not tenant.organisation_cas:
        problems.append(Problem(file, f"{prefix}organisation_cas",
                                "no organisation CAs: only provisioned certificates can connect, "
                                "once the provisioning service is enabled", "warning"))
    if tenant.upstream is None:
        problems.append(Problem(file, f"{prefix}upstream",
                                "no upstream: agents of this tenant have nowhere to go", "warning"))
    return problems


#: A passphrase shorter than this is reported: it is what keeps issuer keys in the database
#: unreadable to anyone holding a copy of the database.
MIN_PASSPHRASE_CHARS = 16


def _store_problems(cfg: SwitchConfig) -> list[Problem]:
    store, main = cfg.store, cfg.path
    problems: list[Problem] = []
    for field in ("password_file", "issuer_key_passphrase_file"):
        path = getattr(store, field)
        if _loose_permissions(path):
            problems.append(Problem(main, f"store.{field}", f"{path} is readable by other "
                                    "users: chmod 600 it", "warning"))
    passphrase = store.issuer_key_passphrase_file
    if passphrase is not None and store.url is None:
        problems.append(Problem(main, "store.issuer_key_passphrase_file", "unused: with SQLite "
                                "issuer keys are files in state_dir", "warning"))
    elif passphrase is not None:
        try:
            length = len(tls_material.read_password_file(passphrase))
        except ValueError:
            length = MIN_PASSPHRASE_CHARS  # the loader reported it
        if length < MIN_PASSPHRASE_CHARS:
            problems.append(Problem(main, "store.issuer_key_passphrase_file", f"the passphrase "
                                    f"has {length} characters; use at least "
                                    f"{MIN_PASSPHRASE_CHARS} (random)", "warning"))
    return problems


def check_config(cfg: SwitchConfig, now: dt.datetime) -> list[Problem]:
    """Warnings (and errors, such as an expired certificate) about a loaded configuration:

    - the admin listener (no TLS, no authentication) enabled off loopback;
    - the server certificate chain or an organisation CA expired (error) or expiring within
      ``EXPIRY_WARNING`` (warning); RSA keys under ``MIN_RSA_BITS``;
    - a tenant hostname the server certificate does not name; secret files (the store's too) or
      the state directory readable by other users; a CRL past its next update;
    - a webhook secret file readable by other users;
    - a short issuer key passphrase, or one set for SQLite, where it is unused;
    - identity rule ``any``; a tenant without organisation CAs or without an upstream; an
      enabled gateway with no tenants.
    """
    problems: list[Problem] = []
    main = cfg.path
    if cfg.admin.listen.enabled and not cfg.admin.listen.is_loopback:
        problems.append(Problem(main, "admin.listen",
                                f"the admin listener on {cfg.admin.listen.host} is reachable from "
                                "other hosts; it has no TLS and no authentication: keep it on loopback",
                                "warning"))
    problems += _server_problems(cfg, now)
    problems += _store_problems(cfg)
    for i, hook in enumerate(cfg.webhooks):
        if _loose_permissions(hook.secret_file):
            problems.append(Problem(main, f"webhooks[{i}].secret_file", f"{hook.secret_file} is "
                                    "readable by other users: chmod 600 it", "warning"))
    if _loose_permissions(cfg.state_dir):
        problems.append(Problem(main, "state_dir", f"{cfg.state_dir} is open to other users; it "
                                "holds issuer private keys: chmod 700 it", "warning"))
    if cfg.gateway.listen.enabled and not cfg.tenants:
        problems.append(Problem(main, "tenants", "no tenants: the gateway will refuse every agent",
                                "warning"))
    for tenant in cfg.tenants.values():
        problems += _tenant_problems(cfg, tenant, now)
    return problems
