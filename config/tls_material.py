"""Reading certificates, keys, CRLs and PKCS#12 keystores from files named in config.

Used by the loader (to refuse a config whose files do not parse), by ``config check`` and by the
listeners. ``load_ca_certificates`` and ``load_crl`` raise ``ValueError`` with a message fit for an
operator; the loader turns it into a ``Problem`` with the file and key. ``load_server_credentials``
raises ``ConfigError`` (itself a ``ValueError``) whose problems name the ``tls.*`` key at fault;
that includes a certificate and key OpenSSL refuses to serve with (``openssl_refusal``).
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from OpenSSL import SSL

from config.errors import ConfigError, Problem
from config.model import ServerTLS

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_pem_certificates(path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in ``path`` (at least one), in file order."""
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path} holds no readable PEM certificate ({exc})") from exc
    if not certs:
        raise ValueError(f"{path} holds no PEM certificate")
    return certs


def is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints CA:true (a certificate without the extension is not a CA)."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def load_ca_certificates(path: Path) -> list[x509.Certificate]:
    """PEM CA certificates: each must have basicConstraints CA:true."""
    certs = load_pem_certificates(path)
    for cert in certs:
        if not is_ca(cert):
            raise ValueError(
                f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate "
                "(basicConstraints CA:true is required)"
            )
    return certs


def load_client_certificates(path: Path) -> list[x509.Certificate]:
    """PEM client certificates an organisation supplied to be trusted one by one
    (``organisation_certs``): none may be a CA (a CA belongs in ``organisation_cas``, where it
    vouches for what it signs)."""
    certs = load_pem_certificates(path)
    for cert in certs:
        if is_ca(cert):
            raise ValueError(f"{path}: {cert.subject.rfc4514_string()} is a CA certificate: list "
                             "CAs in organisation_cas; organisation_certs trusts single client "
                             "certificates")
    return certs


#: A SHA-256 fingerprint as written in config: 64 hex digits, colons allowed between bytes,
#: ``sha256:`` in front allowed.
_FINGERPRINT = re.compile(r"(?:sha256:)?((?:[0-9a-f]{2}:?){31}[0-9a-f]{2})", re.IGNORECASE)
#: What looks meant as a fingerprint (hex and colons only, long), right or wrong.
_HEXISH = re.compile(r"(?:sha256:)?[0-9a-f:]{32,}", re.IGNORECASE)


def parse_sha256_fingerprint(text: str) -> str | None:
    """The fingerprint ``text`` writes, as 64 lower-case hex digits; None when it is not
    written as one. ``ValueError`` for what looks meant as one and is not (a wrong length)."""
    match = _FINGERPRINT.fullmatch(text.strip())
    if match is not None:
        return match.group(1).replace(":", "").lower()
    if _HEXISH.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons "
                         "allowed)")
    return None


def load_crl(path: Path) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER."""
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable CRL (PEM or DER): {exc}") from exc


def openssl_refusal(chain: list[x509.Certificate], key: PrivateKey) -> str | None:
    """Why OpenSSL would refuse to serve with ``chain`` and ``key``, or None. The listeners build
    their contexts the same way, at OpenSSL's default security level, which refuses small keys
    ("ee key too small": RSA under 2048 bits at level 2) and weak signature digests; ``config
    check`` and ``serve`` thus agree on what runs."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        return describe_ssl_error(exc)
    return None


def describe_ssl_error(exc: SSL.Error) -> str:
    """OpenSSL's reasons in an ``SSL.Error``, e.g. ``ee key too small``."""
    reasons = [str(r[2]) for r in exc.args[0] if isinstance(r, tuple) and len(r) == 3] \
        if exc.args and isinstance(exc.args[0], list) else []
    return "; ".join(reasons) or str(exc) or type(exc).__name__


def crl_signer(crl: x509.CertificateRevocationList,
               cas: list[x509.Certificate]) -> x509.Certificate | None:
    """The CA among ``cas`` that issued and signed ``crl``, or None: a revocation list that no
    trusted CA signed revokes nothing and must be refused."""
    for ca in cas:
        if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            return ca
    return None


def _check_key(key: object, path: Path) -> PrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: unsupported private key type {type(key).__name__}")
    return key


def read_password_file(path: Path) -> bytes:
    """The password in ``path``, without one trailing newline (``\\n`` or ``\\r\\n``)."""
    data = _read(path)
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _from_keystore(keystore: Path, password_file: Path) -> tuple[list[x509.Certificate], PrivateKey]:
    """Raises ValueError tagged by ``_Fault`` with the field at fault."""
    try:
        password = read_password_file(password_file)
    except ValueError as exc:
        raise _Fault("keystore_password_file", str(exc)) from exc
    try:
        data = _read(keystore)
    except ValueError as exc:
        raise _Fault("keystore", str(exc)) from exc
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password or None)
    except ValueError as exc:
        raise _Fault("keystore", f"{keystore} does not open with the password in {password_file} "
                     "(wrong password, or not a PKCS#12 file)") from exc
    if key is None:
        raise _Fault("keystore", f"{keystore} holds no private key")
    if cert is None:
        raise _Fault("keystore", f"{keystore} holds no certificate for its key")
    try:
        checked = _check_key(key, keystore)
    except ValueError as exc:
        raise _Fault("keystore", str(exc)) from exc
    if _public_der(cert.public_key()) != _public_der(checked.public_key()):
        raise _Fault("keystore", f"{keystore}: the private key does not match the certificate "
                     f"{cert.subject.rfc4514_string()}")
    refusal = openssl_refusal([cert, *extra], checked)
    if refusal is not None:
        raise _Fault("keystore", _refused_message(keystore, refusal))
    return [cert, *extra], checked


def _refused_message(path: Path, refusal: str) -> str:
    hint = "; use an RSA key of at least 2048 bits or an ECDSA key" if "too small" in refusal \
        else "; use a SHA-256 (or stronger) signature" if "md too weak" in refusal else ""
    return f"{path}: OpenSSL refuses to serve with this certificate and key ({refusal}){hint}"


class _Fault(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def load_server_credentials(
    tls: ServerTLS, *, config_file: Path | None = None,
) -> tuple[list[x509.Certificate], PrivateKey]:
    """The server chain (leaf first) and its private key, from PEM files or a PKCS#12 keystore
    (whose password file loses one trailing newline). The key must match the leaf.

    Raises ``ConfigError`` listing every problem found, each keyed ``tls.<field>``; a problem's
    file is ``config_file`` when given, else the file at fault.
    """
    faults: list[tuple[str, Path | None, str]] = []
    if tls.keystore is not None or tls.keystore_password_file is not None:
        if tls.cert_file is not None or tls.key_file is not None:
            faults.append(("", None, "set either cert_file + key_file or keystore + "
                           "keystore_password_file, not both"))
        elif tls.keystore is None or tls.keystore_password_file is None:
            missing = "keystore" if tls.keystore is None else "keystore_password_file"
            faults.append((missing, None, "is required with the other keystore setting"))
        else:
            try:
                return _from_keystore(tls.keystore, tls.keystore_password_file)
            except _Fault as fault:
                faults.append((fault.field, getattr(tls, fault.field), str(fault)))
    elif tls.cert_file is None or tls.key_file is None:
        if tls.cert_file is None and tls.key_file is None:
            faults.append(("", None, "the server certificate is required: cert_file + key_file, "
                           "or keystore + keystore_password_file"))
        else:
            missing = "cert_file" if tls.cert_file is None else "key_file"
            faults.append((missing, None, "is required with the other PEM file"))
    else:
        chain: list[x509.Certificate] | None = None
        key: PrivateKey | None = None
        try:
            chain = load_pem_certificates(tls.cert_file)
        except ValueError as exc:
            faults.append(("cert_file", tls.cert_file, str(exc)))
        try:
            loaded = serialization.load_pem_private_key(_read(tls.key_file), password=None)
            key = _check_key(loaded, tls.key_file)
        except (ValueError, TypeError) as exc:
            message = str(exc) if str(exc).startswith("cannot read") else (
                f"{tls.key_file} is not an unencrypted PEM private key: {exc}")
            faults.append(("key_file", tls.key_file, message))
        if chain is not None and key is not None:
            if _public_der(chain[0].public_key()) == _public_der(key.public_key()):
                refusal = openssl_refusal(chain, key)
                if refusal is None:
                    return chain, key
                faults.append(("cert_file", tls.cert_file, _refused_message(tls.cert_file, refusal)))
            else:
                faults.append(("key_file", tls.key_file, f"{tls.key_file}: the private key does "
                               f"not match the certificate {chain[0].subject.rfc4514_string()} "
                               f"in {tls.cert_file}"))
    raise ConfigError([
        Problem(config_file or at or Path("switch.toml"), f"tls.{field}" if field else "tls", message)
        for field, at, message in faults
    ])
