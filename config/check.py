"""Checks for risky settings in a configuration that loads (``switch config check``).

``check_config`` reads the files the config names and is otherwise pure; ``now`` is passed in. It
returns problems rather than raising: warnings for risky settings, errors for things that will
fail at run time (an expired certificate). The loader has already refused anything malformed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from config import ciphers, tls_material
from config.errors import ConfigError, Problem, format_problems
from config.model import SwitchConfig, Tenant

#: Certificates expiring within this window are reported (a month leaves time to renew).
EXPIRY_WARNING = dt.timedelta(days=30)
#: NIST SP 800-131A: RSA keys under 2048 bits are disallowed for signatures.
MIN_RSA_BITS = 2048

__all__ = ["EXPIRY_WARNING", "MIN_RSA_BITS", "ProfileUse", "check_config", "format_problems",
           "missing_profiles"]


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
    for path in tenant.organisation_certs:
        try:
            pinned = tls_material.load_client_certificates(path)
        except ValueError as exc:
            problems.append(Problem(file, f"{prefix}organisation_certs", str(exc)))
            continue
        for cert in pinned:
            problems += _cert_problems(cert, file, f"{prefix}organisation_certs", now)
    if tenant.identity.kind == "any":
        problems.append(Problem(file, f"{prefix}identity.rule",
                                "rule \"any\" lets every certificate from the organisation CAs "
                                "in, whatever it names", "warning"))
    if not tenant.uses_organisation_cas:
        problems.append(Problem(file, f"{prefix}organisation_cas",
                                "no organisation CAs or certificates: only provisioned "
                                "certificates can connect, once the provisioning service is "
                                "enabled", "warning"))
    if tenant.upstream is None:
        problems.append(Problem(file, f"{prefix}upstream",
                                "no upstream: agents of this tenant have nowhere to go", "warning"))
    return problems


def _email_probes(cfg: SwitchConfig) -> list[str]:
    """E-mail addresses such as organisation certificates are known by (the default identity
    rule), on the tenants' own names and on others."""
    hosts = [h for t in cfg.tenants.values() for h in t.hostnames] or ["example.com"]
    return ["a@b", "agent1@example.com", *(f"agent1@{h}" for h in hosts)]


def _profile_problems(cfg: SwitchConfig) -> list[Problem]:
    """A profile whose subject rule lets a provisioned CN hold an ``@``: anyone with a
    provisioning key could then enroll a name that looks like an organisation identity."""
    problems: list[Problem] = []
    probes = _email_probes(cfg)
    for profile in cfg.profiles.values():
        try:
            allows = "@" in profile.subject_pattern or any(
                re.fullmatch(profile.subject_pattern, p) for p in probes)
        except re.error:  # the loader reported it
            continue
        if allows:
            problems.append(Problem(cfg.path, f"profiles.{profile.name}.subject_pattern",
                                    "lets a provisioned certificate's CN hold \"@\": anyone with "
                                    "a provisioning key can enroll a name that looks like an "
                                    "organisation identity (an e-mail address); leave \"@\" out, "
                                    "and have upstreams read X-Switch-Identity together with "
                                    "X-Switch-Trust (docs/gateway.md)", "warning"))
    return problems


@attrs.frozen
class ProfileUse:
    """A live provisioning key (active or suspended) that names a profile of its own, as the
    store holds it: what ``missing_profiles`` checks a configuration against."""

    tenant: str
    key_name: str
    key_id: str
    profile: str


def missing_profiles(cfg: SwitchConfig, uses: Iterable[ProfileUse]) -> list[Problem]:
    """An error for each live key whose profile ``cfg`` does not define: every enrollment or
    renewal through it would be refused (``unknown_profile``). The loader checks the tenants'
    profiles; the keys' are in the store, so ``config check`` (when it can read the store),
    ``switch reload`` and the supervisor of ``--workers`` read them and call this."""
    problems: list[Problem] = []
    for use in uses:
        if use.profile not in cfg.profiles:
            problems.append(Problem(cfg.path, f"profiles.{use.profile}", (
                f"provisioning key {use.key_name!r} ({use.key_id}) of tenant {use.tenant} names "
                f"profile {use.profile!r}, which the configuration does not define: its "
                "enrollments and renewals would be refused; define the profile again, or "
                f"revoke the key (switch keys revoke {use.tenant} {use.key_name!r})")))
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


def _listener_limit_problems(cfg: SwitchConfig) -> list[Problem]:
    """Per-source handshake limits and first-byte deadlines that cannot do their work."""
    problems: list[Problem] = []
    for name, settings, handshake_s, handshake_key in (
            ("gateway", cfg.gateway, cfg.gateway.handshake_timeout_s, "handshake_timeout"),
            ("enroll", cfg.enroll, cfg.enroll.request_timeout_s, "request_timeout")):
        if not settings.listen.enabled:
            continue
        if settings.max_handshakes_per_source >= settings.max_connections:
            problems.append(Problem(cfg.path, f"{name}.max_handshakes_per_source", (
                f"{settings.max_handshakes_per_source} is not below max_connections "
                f"({settings.max_connections}): one source address holding idle connections "
                "can take every connection and lock other agents out"), "warning"))
        if settings.first_byte_timeout_s >= handshake_s:
            problems.append(Problem(cfg.path, f"{name}.first_byte_timeout", (
                f"is not shorter than {handshake_key} ({handshake_s:g}s): a connection that "
                "never sends a byte is held for the whole handshake deadline"), "warning"))
    return problems


def _cipher_problems(cfg: SwitchConfig) -> list[Problem]:
    """``[tls] ciphers`` that let TLS 1.2 use a suite without forward secrecy or without AEAD."""
    if cfg.tls.ciphers is None:
        return []
    try:
        weak = ciphers.weak(ciphers.expand(cfg.tls.ciphers))
    except ValueError:
        return []  # the loader reported it
    if not weak:
        return []
    shown = ", ".join(weak[:6]) + (f" and {len(weak) - 6} more" if len(weak) > 6 else "")
    return [Problem(cfg.path, "tls.ciphers", f"allows TLS 1.2 suites without forward secrecy or "
                    f"without AEAD ({shown}): recorded sessions could be decrypted with a stolen "
                    "server key, or use CBC/SHA-1; leave it out for ECDHE with AES-GCM or "
                    "ChaCha20-Poly1305 only", "warning")]


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
      enabled gateway with no tenants;
    - a profile whose ``subject_pattern`` lets a provisioned CN hold an ``@`` (it could pass
      for an organisation identity);
    - ``[tls] ciphers`` allowing a TLS 1.2 suite without forward secrecy or AEAD;
    - a listener's ``max_handshakes_per_source`` not below its ``max_connections``, or its
      ``first_byte_timeout`` not shorter than its handshake deadline.
    """
    problems: list[Problem] = []
    main = cfg.path
    if cfg.admin.listen.enabled and not cfg.admin.listen.is_loopback:
        problems.append(Problem(main, "admin.listen",
                                f"the admin listener on {cfg.admin.listen.host} is reachable from "
                                "other hosts; it has no TLS and no authentication: keep it on loopback",
                                "warning"))
    problems += _server_problems(cfg, now)
    problems += _cipher_problems(cfg)
    problems += _listener_limit_problems(cfg)
    problems += _store_problems(cfg)
    problems += _profile_problems(cfg)
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
