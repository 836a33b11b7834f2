"""EST wire formats (RFC 7030, with RFC 8951's clarifications), as pure functions.

Bodies are base64 (RFC 8951: the ``Content-Transfer-Encoding`` header is ignored and line breaks
are allowed anywhere); certificates travel as certs-only CMS (PKCS#7) ``application/pkcs7-mime``.
Switch reads any line breaks (LF, CRLF, spaces) and writes LF, so that a reply piped into
``base64 -d`` decodes (GNU coreutils refuses a CR); inside a ``multipart/mixed`` reply the lines
end with CRLF, as MIME's canonical form requires.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from enroll.errors import (
    BadBase64,
    BodyTooLarge,
    MalformedCredentials,
    MethodNotAllowed,
    UnknownPath,
)

PREFIX = "/.well-known/est/"
OPERATIONS = {
    "cacerts": "GET",
    "csrattrs": "GET",
    "simpleenroll": "POST",
    "simplereenroll": "POST",
    "serverkeygen": "POST",
    #: Switch's extension: server-side key generation answered as an encrypted PKCS#12 (seed 001).
    "serverkeygen-pkcs12": "POST",
}
LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
#: RFC 7235 token68, the syntax of a Bearer credential (RFC 6750 2.1).
_TOKEN68 = re.compile(rb"[A-Za-z0-9._~+/-]+=*")
MAX_AUTHORIZATION_BYTES = 1024
PKCS7_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
PKCS7_CERTS_ONLY_GENERIC = "application/pkcs7-mime"


@attrs.frozen
class EstRoute:
    label: str | None
    operation: str


def parse_est_path(method: str, path: str) -> EstRoute:
    """``/.well-known/est/<op>`` or ``/.well-known/est/<label>/<op>``; the query is ignored."""
    path = path.split("?", 1)[0]
    if not path.startswith(PREFIX):
        raise UnknownPath(f"not an EST path: {path[:100]!r}")
    parts = path[len(PREFIX):].split("/")
    if len(parts) == 1:
        label, op = None, parts[0]
    elif len(parts) == 2 and LABEL.fullmatch(parts[0]):
        label, op = parts
    else:
        raise UnknownPath(f"not an EST path: {path[:100]!r}")
    if op not in OPERATIONS:
        raise UnknownPath(f"unknown EST operation {op[:40]!r}")
    if method != OPERATIONS[op]:
        raise MethodNotAllowed(f"{op} takes {OPERATIONS[op]}, not {method[:10]}")
    return EstRoute(label, op)


def decode_base64_body(body: bytes, *, max_bytes: int) -> bytes:
    """The DER inside a base64 body. Whitespace (any line breaks) is allowed; anything else
    outside the base64 alphabet is refused. A PEM-wrapped body is accepted as a convenience."""
    if len(body) > max_bytes:
        raise BodyTooLarge(f"body of {len(body)} bytes is over {max_bytes}")
    text = body.strip()
    if text.startswith(b"-----BEGIN "):
        lines = [ln for ln in text.splitlines() if not ln.startswith(b"-----")]
        text = b"".join(lines)
    compact = b"".join(text.split())
    if not compact or len(compact) % 4 or not _B64_ALPHABET.fullmatch(compact):
        raise BadBase64("the body is not base64")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadBase64(f"the body is not base64: {exc}") from exc


def encode_base64_body(der: bytes, *, newline: bytes = b"\n") -> bytes:
    """Base64 in lines of 64 characters, each ended by ``newline``: LF for an HTTP body (RFC 8951
    allows any line break, and ``base64 -d`` refuses CR), CRLF inside a MIME multipart."""
    encoded = base64.b64encode(der)
    return b"".join(encoded[i:i + 64] + newline for i in range(0, len(encoded), 64))


def certs_only(certs: list[x509.Certificate]) -> bytes:
    """A certs-only CMS SignedData (DER) holding ``certs``."""
    return pkcs7.serialize_certificates(certs, Encoding.DER)


#: signedData's OID (1.2.840.113549.1.7.2) and, with no signers, the fixed fields before the
#: certificates: version 1, no digest algorithms, id-data (1.2.840.113549.1.7.1) content.
_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")
_SIGNED_DATA_HEAD = bytes.fromhex("0201013100300b06092a864886f70d010701")
_NO_SIGNER_INFOS = bytes.fromhex("3100")


def certs_only_der(cert_der: bytes) -> bytes:
    """``certs_only`` of one certificate given as DER, encoded here (the same bytes): the
    reply to every enrollment, with no certificate parsed or serialised again."""
    signed = _der_tlv(0x30, _SIGNED_DATA_HEAD + _der_tlv(0xA0, cert_der) + _NO_SIGNER_INFOS)
    return _der_tlv(0x30, _SIGNED_DATA_OID + _der_tlv(0xA0, signed))


def parse_authorization(header: bytes | None) -> str | None:
    """The provisioning-key secret from ``Authorization``: the password of HTTP Basic (the user
    name is ignored) or a Bearer token. None when there is no header; refused when it is
    malformed or too long (``MalformedCredentials``)."""
    if header is None:
        return None
    if len(header) > MAX_AUTHORIZATION_BYTES:
        raise MalformedCredentials("Authorization header too long")
    scheme, _, value = header.strip().partition(b" ")
    value = value.strip()
    if scheme.lower() == b"bearer" and value:
        if not _TOKEN68.fullmatch(value):
            raise MalformedCredentials("malformed Bearer token")
        return value.decode("ascii")
    if scheme.lower() == b"basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise MalformedCredentials("malformed Basic credentials") from exc
        _, sep, password = decoded.partition(":")
        if not sep or not password:
            raise MalformedCredentials("Basic credentials without a password")
        return password
    raise MalformedCredentials("unsupported Authorization scheme")


#: One element of CsrAttrs (RFC 7030 4.5.2, ``AttrOrOID``): a bare OID, or an attribute as its
#: type OID and the OIDs of its values.
AttrOrOid = str | tuple[str, Sequence[str]]


def csrattrs(items: Sequence[AttrOrOid]) -> bytes:
    """DER of CsrAttrs (RFC 7030 4.5.2): ``SEQUENCE SIZE (0..MAX) OF AttrOrOID``, where an
    AttrOrOID is an OBJECT IDENTIFIER or an ``Attribute ::= SEQUENCE { type OID, values SET SIZE
    (1..MAX) OF ... }``. A required EC curve is an attribute, as in the RFC's own example::

        SEQUENCE { OID ecPublicKey (1.2.840.10045.2.1)  SET { OID secp384r1 (1.3.132.0.34) } }

    The values of a SET OF are sorted by their encodings (X.690 11.6)."""
    body = b""
    for item in items:
        if isinstance(item, str):
            body += _der_oid(item)
            continue
        kind, values = item
        if not values:
            raise ValueError(f"attribute {kind} needs at least one value")
        encoded = sorted(dict.fromkeys(_der_oid(v) for v in values))
        body += _der_tlv(0x30, _der_oid(kind) + _der_tlv(0x31, b"".join(encoded)))
    return _der_tlv(0x30, body)


def _der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_oid(dotted: str) -> bytes:
    """DER of an OBJECT IDENTIFIER (X.690 8.19): the first two arcs share one subidentifier,
    each subidentifier is base-128, high bit set on all but its last octet."""
    parts = [int(p) for p in dotted.split(".")]
    if len(parts) < 2 or parts[0] > 2 or (parts[0] < 2 and parts[1] > 39) or min(parts) < 0:
        raise ValueError(f"not an OID: {dotted!r}")
    body = bytearray()
    for part in [40 * parts[0] + parts[1], *parts[2:]]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return b"\x06" + _der_length(len(body)) + bytes(body)


def multipart_serverkeygen(key_pkcs8_der: bytes, certs_only_der: bytes) -> tuple[str, bytes]:
    """RFC 7030 4.4.2: multipart/mixed with the private key (application/pkcs8) and the
    certificate (certs-only PKCS#7), both base64."""
    boundary = "est-" + secrets.token_hex(12)
    parts = [
        f"--{boundary}\r\nContent-Type: application/pkcs8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n".encode()
        + encode_base64_body(key_pkcs8_der, newline=b"\r\n"),
        f"--{boundary}\r\nContent-Type: {PKCS7_CERTS_ONLY}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n".encode()
        + encode_base64_body(certs_only_der, newline=b"\r\n"),
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return f"multipart/mixed; boundary={boundary}", body
