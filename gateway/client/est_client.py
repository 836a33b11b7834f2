"""The reference EST client (RFC 7030), used by ``switch agent`` and ``switch loadtest``.

Trio, the standard ``ssl`` module (a client needs nothing more) and h11. One connection is kept
alive across requests and reopened when the server closes it. The server is authenticated by a CA
file and, optionally, pinned by the SHA-256 of its public key (seed 002: server pinning).
Every wait is bounded by ``timeout_s``; every reply is bounded in size.

A Switch names the renew-before window of the profile that issued a certificate in the reply's
``Switch-Renew-Before`` header (seconds, a Switch extension); ``simpleenroll_issued`` and
``simplereenroll_issued`` return it with the certificate, as ``None`` when the server did not
say (another EST server, an older Switch) or said something that is not a number of seconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import ssl
from pathlib import Path

import attrs
import h11
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from gateway.client import pki

MAX_REPLY_BYTES = 1 << 20
#: Switch's extension header (lower case, as h11 gives names): the issuing profile's
#: renew-before window in whole seconds.
RENEW_BEFORE_HEADER = "switch-renew-before"


class EstClientError(Exception):
    """The server refused (``status`` and its ``reason`` code) or could not be reached."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


@attrs.frozen
class EstServer:
    host: str
    port: int
    server_name: str
    ca_file: Path | None = None
    #: hex SHA-256 of the server certificate's SubjectPublicKeyInfo
    pin_sha256: str | None = None
    label: str | None = None

    def path(self, op: str) -> str:
        return f"/.well-known/est/{self.label + '/' if self.label else ''}{op}"


def spki_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def make_csr(common_name: str, key: pki.PrivateKey) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@attrs.frozen
class Issued:
    """A certificate from ``simpleenroll``/``simplereenroll`` and the renew-before window the
    server named with it, or ``None`` when it did not."""

    certificate: x509.Certificate
    renew_before: dt.timedelta | None = None


def renew_before_of(headers: dict[str, str]) -> dt.timedelta | None:
    """The ``Switch-Renew-Before`` window of a reply: 1 to 10 ASCII digits (seconds), else
    ``None`` (absent or malformed: the caller falls back to its own default)."""
    value = headers.get(RENEW_BEFORE_HEADER, "").strip()
    if not re.fullmatch(r"[0-9]{1,10}", value):
        return None
    return dt.timedelta(seconds=int(value))


class EstClient(trio.abc.AsyncResource):
    def __init__(self, server: EstServer, *, timeout_s: float = 30.0,
                 client_cert: tuple[Path, Path] | None = None) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self.context = ssl.create_default_context(
            cafile=str(server.ca_file) if server.ca_file else None)
        if server.ca_file is None and server.pin_sha256:
            # A pin alone authenticates the server: skip the CA check, enforce the pin.
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        if client_cert is not None:
            self.context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        self._stream: trio.SSLStream[trio.SocketStream] | None = None
        self._h11: h11.Connection | None = None

    async def aclose(self) -> None:
        """Close the kept-alive connection (``async with`` does it on leaving: a
        ``trio.abc.AsyncResource``). The client stays usable: the next request reconnects."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.move_on_after(1):
                await stream.aclose()

    async def _connect(self) -> None:
        tcp = await trio.open_tcp_stream(self.server.host, self.server.port)
        stream = trio.SSLStream(tcp, self.context, server_hostname=self.server.server_name)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        if self.server.pin_sha256:
            der = stream.getpeercert(binary_form=True)
            actual = spki_sha256(x509.load_der_x509_certificate(der)) if der else ""
            if actual != self.server.pin_sha256.lower().replace(":", ""):
                await trio.aclose_forcefully(stream)
                raise EstClientError(0, "server_pin_mismatch")
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT)

    async def request(self, method: str, op: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> Reply:
        try:
            with trio.fail_after(self.timeout_s):
                return await self._request(method, op, body, headers or {})
        except (trio.TooSlowError, OSError, trio.BrokenResourceError, ssl.SSLError,
                h11.ProtocolError) as exc:
            await self.aclose()
            raise EstClientError(0, f"transport_error: {type(exc).__name__}: {exc}") from exc

    async def _request(self, method: str, op: str, body: bytes, headers: dict[str, str]) -> Reply:
        if self._stream is None:
            await self._connect()
        assert self._stream is not None and self._h11 is not None
        stream, conn = self._stream, self._h11
        all_headers = [("Host", self.server.server_name), ("Content-Length", str(len(body))),
                       *headers.items()]
        await stream.send_all(conn.send(h11.Request(method=method, target=self.server.path(op),
                                                    headers=all_headers)) or b"")
        if body:
            await stream.send_all(conn.send(h11.Data(data=body)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_REPLY_BYTES:
                    raise h11.RemoteProtocolError("reply too large")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("server closed the connection")
        assert response is not None
        reply = Reply(response.status_code,
                      {k.decode().lower(): v.decode("latin-1") for k, v in response.headers},
                      b"".join(chunks))
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.aclose()
        return reply

    @staticmethod
    def _raise_for(reply: Reply) -> None:
        if reply.status != 200:
            reason = reply.body.decode("utf-8", "replace").strip().partition(" ")[2] or "error"
            retry = reply.headers.get("retry-after")
            raise EstClientError(reply.status, reason[:100],
                                 int(retry) if retry and retry.isdigit() else None)

    @staticmethod
    def _certs(reply: Reply) -> list[x509.Certificate]:
        der = base64.b64decode(b"".join(reply.body.split()))
        return list(pkcs7.load_der_pkcs7_certificates(der))

    async def cacerts(self) -> list[x509.Certificate]:
        reply = await self.request("GET", "cacerts")
        self._raise_for(reply)
        return self._certs(reply)

    async def _enroll(self, op: str, csr: x509.CertificateSigningRequest,
                      headers: dict[str, str]) -> Issued:
        body = base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))
        reply = await self.request("POST", op, body,
                                   {"Content-Type": "application/pkcs10", **headers})
        if reply.status == 202:
            retry = reply.headers.get("retry-after", "60")
            raise EstClientError(202, "pending_approval", int(retry) if retry.isdigit() else 60)
        self._raise_for(reply)
        return Issued(self._certs(reply)[0], renew_before_of(reply.headers))

    async def simpleenroll_issued(self, csr: x509.CertificateSigningRequest, secret: str
                                  ) -> Issued:
        """Enroll with a provisioning key (sent as the HTTP Basic password)."""
        token = base64.b64encode(f"agent:{secret}".encode()).decode()
        return await self._enroll("simpleenroll", csr, {"Authorization": f"Basic {token}"})

    async def simplereenroll_issued(self, csr: x509.CertificateSigningRequest) -> Issued:
        """Renew with the current certificate (this client's ``client_cert``)."""
        return await self._enroll("simplereenroll", csr, {})

    async def simpleenroll(self, csr: x509.CertificateSigningRequest, secret: str
                           ) -> x509.Certificate:
        """``simpleenroll_issued``, the certificate alone."""
        return (await self.simpleenroll_issued(csr, secret)).certificate

    async def simplereenroll(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        """``simplereenroll_issued``, the certificate alone."""
        return (await self.simplereenroll_issued(csr)).certificate

    async def serverkeygen_pkcs12(self, csr: x509.CertificateSigningRequest, secret: str,
                                  password: str | None = None) -> tuple[bytes, str]:
        token = base64.b64encode(f"agent:{secret}".encode()).decode()
        headers = {"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"}
        if password is not None:
            headers["X-Switch-Pkcs12-Password"] = password
        body = base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))
        reply = await self.request("POST", "serverkeygen-pkcs12", body, headers)
        self._raise_for(reply)
        used = password if password is not None else reply.headers["x-switch-pkcs12-password"]
        return base64.b64decode(b"".join(reply.body.split())), used
