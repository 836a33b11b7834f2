"""What the console's pages show, as values: times for people (and back, for the audit log's
filters), and a tenant's organisation trust (the certificates ``organisation_cas`` and
``organisation_certs`` name, read from their files). Pure but for reading those files."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from config import tls_material
from config.model import Tenant

_WHEN = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?(?:\s*UTC|Z)?")
WHEN_HINT = "YYYY-MM-DD or YYYY-MM-DD HH:MM, in UTC"


def when(ts: int | None) -> str:
    """A Unix time as people read it, in UTC; a dash for none."""
    if ts is None:
        return "\u2014"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def when_input(ts: int | None) -> str:
    """A Unix time as the audit filter's fields take it."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def parse_when(text: str, *, end: bool) -> int:
    """Unix seconds from ``WHEN_HINT``'s forms (UTC). A range's end takes in the whole day or
    minute it names. ``ValueError`` with words for people."""
    match = _WHEN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"write a time as {WHEN_HINT}")
    year, month, day, hour, minute, second = match.groups()
    try:
        start = dt.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                            int(second or 0), tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{text.strip()} is not a date (write {WHEN_HINT})") from None
    if end:
        step = dt.timedelta(days=1) if hour is None else dt.timedelta(
            minutes=1) if second is None else dt.timedelta(seconds=1)
        start += step - dt.timedelta(seconds=1)
    return int(start.timestamp())


#: Audit detail fields that hold a Unix time (``enroll.store.ops_keys``: an issuer's validity).
_TIME_DETAILS = frozenset({"not_before", "not_after"})


def detail(value: object, name: str) -> str:
    """One audit entry's detail as people read it: times as dates, lists joined, a dash for
    none."""
    if value is None:
        return "\u2014"
    if (name in _TIME_DETAILS or name.endswith("_at")) and isinstance(value, int) \
            and not isinstance(value, bool):
        return when(value)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "\u2014"
    return str(value)


def short(digest: str, keep: int = 16) -> str:
    return digest if len(digest) <= keep else digest[:keep] + "\u2026"


@attrs.frozen
class TrustedCertificate:
    """One certificate of a tenant's organisation trust, as the page lists it."""

    kind: str
    subject: str
    sha256: str
    not_after: int | None
    #: The file that holds it (None: named by fingerprint in the configuration).
    source: str | None
    problem: str | None = None


def _listed(kind: str, cert: x509.Certificate, source: Path) -> TrustedCertificate:
    return TrustedCertificate(kind, cert.subject.rfc4514_string() or "(no subject)",
                              cert.fingerprint(hashes.SHA256()).hex(),
                              int(cert.not_valid_after_utc.timestamp()), source.name)


def organisation_trust(tenant: Tenant) -> list[TrustedCertificate]:
    """The organisation CAs and the pinned client certificates the tenant trusts, from the files
    its configuration names (read now: a file that no longer reads says so)."""
    listed: list[TrustedCertificate] = []
    for kind, paths, load in (("CA", tenant.organisation_cas, tls_material.load_ca_certificates),
                              ("Pinned certificate", tenant.organisation_certs,
                               tls_material.load_client_certificates)):
        for path in paths:
            try:
                listed.extend(_listed(kind, cert, path) for cert in load(path))
            except (OSError, ValueError) as exc:
                listed.append(TrustedCertificate(kind, "", "", None, path.name, str(exc)))
    listed.extend(TrustedCertificate("Pinned certificate", "", sha, None, None)
                  for sha in tenant.organisation_cert_sha256)
    return listed
