"""Reading ``[profiles.NAME]`` and ``[tenants.NAME]`` (or a tenant's own file in ``tenants_dir``):
certificate templates, and each tenant's names, organisation trust (CAs, CRLs, pinned
certificates), identity rule and upstream; the keys and their defaults are listed in
``config.load``."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from config import tls_material
from config.model import KEY_TYPES, IdentityRule, Profile, Tenant
from config.tables import MISSING, Table, tname

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
IDENTITY_RULES = ("email-san", "common-name", "any")


def read_profile(t: Table, name: str) -> Profile:
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


def _read_identity(t: Table) -> IdentityRule:
    value = t.raw("identity")
    if value is MISSING:
        return IdentityRule()
    if not isinstance(value, dict):
        t.error("identity", f"expected a table such as {{ rule = \"email-san\" }}, got {tname(value)}")
        return IdentityRule()
    it = Table(value, t.file, t.key("identity"), t.problems, t.source)
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


def read_tenant(t: Table, name: str) -> Tenant:
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


def _read_pinned(t: Table) -> tuple[tuple[Path, ...], tuple[str, ...]]:
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
