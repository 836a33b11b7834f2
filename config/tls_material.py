"""Reading certificates, keys, CRLs and PKCS#12 keystores from files named in config.

Each function raises ``ValueError`` with a message fit for an operator; the loader turns it into a
``Problem`` with the file and key.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from config.model import ServerTLS

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_pem_certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path} holds no readable PEM certificate ({exc})") from exc
    if not certs:
        raise ValueError(f"{path} holds no PEM certificate")
    return certs


def load_ca_certificates(path: Path) -> list[x509.Certificate]:
    """PEM CA certificates: each must have basicConstraints CA:true."""
    certs = load_pem_certificates(path)
    for cert in certs:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ValueError(
                f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate "
                "(basicConstraints CA:true is required)"
            )
    return certs


def load_crl(path: Path) -> x509.CertificateRevocationList:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable CRL (PEM or DER): {exc}") from exc


def _check_key(key: object, path: Path) -> PrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: unsupported private key type {type(key).__name__}")
    return key


def read_password_file(path: Path) -> bytes:
    data = _read(path)
    return data[:-1] if data.endswith(b"\n") else data


def load_server_credentials(tls: ServerTLS) -> tuple[list[x509.Certificate], PrivateKey]:
    """The server chain (leaf first) and its private key, from PEM files or a PKCS#12 keystore.
    The key must match the leaf."""
    if tls.keystore is not None:
        if tls.keystore_password_file is None:
            raise ValueError("a keystore needs keystore_password_file")
        password = read_password_file(tls.keystore_password_file)
        data = _read(tls.keystore)
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, password or None)
        except ValueError as exc:
            raise ValueError(
                f"{tls.keystore} does not open with the password in {tls.keystore_password_file} "
                "(wrong password or not a PKCS#12 file)"
            ) from exc
        if key is None:
            raise ValueError(f"{tls.keystore} holds no private key")
        if cert is None:
            raise ValueError(f"{tls.keystore} holds no certificate for its key")
        chain, source = [cert, *extra], tls.keystore
    else:
        if tls.cert_file is None or tls.key_file is None:
            raise ValueError("the server certificate needs cert_file and key_file (or a keystore)")
        chain = load_pem_certificates(tls.cert_file)
        try:
            key = serialization.load_pem_private_key(_read(tls.key_file), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{tls.key_file} is not an unencrypted PEM private key: {exc}") from exc
        source = tls.key_file
    checked = _check_key(key, source)
    leaf_public = chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_public = checked.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf_public != key_public:
        raise ValueError(f"{source}: the private key does not match the certificate {chain[0].subject.rfc4514_string()}")
    return chain, checked
