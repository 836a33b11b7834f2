"""Checks for risky settings in a configuration that loads (``switch config check``).

``check_config`` is pure apart from reading the files the config names; ``now`` is passed in.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from config import tls_material
from config.errors import Problem, format_problems
from config.model import SwitchConfig

EXPIRY_WARNING = dt.timedelta(days=30)
MIN_RSA_BITS = 2048

__all__ = ["check_config", "format_problems"]


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


def check_config(cfg: SwitchConfig, now: dt.datetime) -> list[Problem]:
    """Warnings (and errors, such as an expired certificate) about a loaded configuration."""
    problems: list[Problem] = []
    main = cfg.path
    if cfg.admin.listen.enabled and not cfg.admin.listen.is_loopback:
        problems.append(Problem(main, "admin.listen",
                                f"the admin listener on {cfg.admin.listen.host} is reachable from "
                                "other hosts; it has no TLS and no authentication: keep it on loopback",
                                "warning"))
    tls_key = "tls.keystore" if cfg.tls.keystore else "tls.cert_file"
    try:
        chain, key = tls_material.load_server_credentials(cfg.tls)
    except ValueError as exc:
        problems.append(Problem(main, tls_key, str(exc)))
    else:
        for cert in chain:
            problems += _cert_problems(cert, main, tls_key, now)
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
            problems.append(Problem(main, tls_key, f"the server key is {key.key_size}-bit RSA; use "
                                    f"at least {MIN_RSA_BITS} bits", "warning"))
    if cfg.gateway.listen.enabled and not cfg.tenants:
        problems.append(Problem(main, "tenants", "no tenants: the gateway will refuse every agent",
                                "warning"))
    for tenant in cfg.tenants.values():
        file = tenant.source or main
        prefix = "" if tenant.source and tenant.source != main else f"tenants.{tenant.name}."
        for i, path in enumerate(tenant.organisation_cas):
            try:
                certs = tls_material.load_ca_certificates(path)
            except ValueError as exc:
                problems.append(Problem(file, f"{prefix}organisation_cas[{i}]", str(exc)))
                continue
            for cert in certs:
                problems += _cert_problems(cert, file, f"{prefix}organisation_cas[{i}]", now)
        if tenant.identity.kind == "any":
            problems.append(Problem(file, f"{prefix}identity.rule",
                                    "rule \"any\" lets every certificate from the organisation CAs "
                                    "in, whatever it names", "warning"))
        if not tenant.organisation_cas:
            problems.append(Problem(file, f"{prefix}organisation_cas",
                                    "no organisation CAs: only provisioned certificates can connect, "
                                    "and only while the provisioning service is enabled", "warning"))
        if tenant.upstream is None:
            problems.append(Problem(file, f"{prefix}upstream",
                                    "no upstream: agents of this tenant have nowhere to go", "warning"))
    return problems
