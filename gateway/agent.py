"""``switch agent``: the reference endpoint agent.

It keeps its credentials in a directory of its own (``certs/NAME.pem`` + ``NAME.key``, keys mode
0600, and ``preferred``, the name of the certificate that last worked), and:

1. enrolls over EST with a provisioning key when it has no certificate (the key pair is made
   here and never leaves the machine);
2. renews with ``simplereenroll`` once the renew-before window of its certificate opens;
3. connects to the gateway, trying its certificates in turn, the one that worked last time first,
   and remembers the one that works (seed 000);
4. holds the session, and reconnects with exponential back-off and full jitter when it drops;
5. authenticates the server by a CA file or by the SHA-256 of its public key (seed 002 pinning),
   checked before anything is sent over the connection.

``--once MESSAGE`` sends one message, prints the reply and exits (for scripts and tests).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import structlog
import trio
import trio_websocket
from cryptography import x509

from enroll import pki
from gateway.est_client import EstClient, EstClientError, EstServer, make_csr, spki_sha256

log = structlog.get_logger("switch.agent")

PREFERRED = "preferred"
MAX_BACKOFF_S = 60.0


class AgentError(Exception):
    """The agent cannot go on (no credentials and no key to enroll with, every certificate
    refused, ...)."""


@attrs.frozen
class AgentSettings:
    directory: Path
    server_name: str
    gateway: tuple[str, int]
    enroll: tuple[str, int] | None = None
    ca_file: Path | None = None
    pin_sha256: str | None = None
    key_secret: str | None = None
    common_name: str | None = None
    path: str = "/"
    renew_before: dt.timedelta = dt.timedelta(days=7)
    key_type: str = "ec-p256"
    timeout_s: float = 20.0


@attrs.frozen
class Credential:
    name: str
    cert_file: Path
    key_file: Path

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.cert_file.read_bytes())[0]


class Agent:
    def __init__(self, settings: AgentSettings, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.settings = settings
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.certs_dir = settings.directory / "certs"

    # --- credentials ---------------------------------------------------------------------------

    def credentials(self) -> list[Credential]:
        """Every certificate with its key, the preferred one first."""
        found = [Credential(p.stem, p, p.with_suffix(".key"))
                 for p in sorted(self.certs_dir.glob("*.pem")) if p.with_suffix(".key").exists()]
        preferred_file = self.settings.directory / PREFERRED
        preferred = preferred_file.read_text().strip() if preferred_file.exists() else None
        return sorted(found, key=lambda c: c.name != preferred)

    def remember(self, credential: Credential) -> None:
        (self.settings.directory / PREFERRED).write_text(credential.name + "\n")

    def _save(self, name: str, cert: x509.Certificate, key: pki.PrivateKey) -> Credential:
        self.certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file, cert_file = self.certs_dir / f"{name}.key", self.certs_dir / f"{name}.pem"
        pki.write_private(key_file, pki.key_pem(key))
        tmp = cert_file.with_name(f".{cert_file.name}.tmp")
        tmp.write_bytes(pki.cert_pem(cert))
        tmp.replace(cert_file)
        return Credential(name, cert_file, key_file)

    def _est(self, client_cert: Credential | None = None) -> EstClient:
        if self.settings.enroll is None:
            raise AgentError("no enrollment address (--enroll)")
        host, port = self.settings.enroll
        return EstClient(EstServer(host, port, self.settings.server_name, self.settings.ca_file,
                                   self.settings.pin_sha256), timeout_s=self.settings.timeout_s,
                         client_cert=(client_cert.cert_file, client_cert.key_file) if client_cert else None)

    async def enroll(self) -> Credential:
        """A first certificate, with the provisioning key."""
        if not self.settings.key_secret or not self.settings.common_name:
            raise AgentError("no certificate yet: a provisioning key and a name are needed to enroll")
        key = pki.generate_key(self.settings.key_type)
        async with self._est() as est:
            cert = await est.simpleenroll(make_csr(self.settings.common_name, key),
                                          self.settings.key_secret)
        log.info("enrolled", serial=format(cert.serial_number, "x"),
                 not_after=cert.not_valid_after_utc.isoformat())
        return self._save("provisioned", cert, key)

    def renewal_time(self, credential: Credential) -> dt.datetime:
        """When the renew-before window opens (at most half the lifetime before expiry)."""
        cert = credential.certificate()
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        return cert.not_valid_after_utc - min(self.settings.renew_before, lifetime / 2)

    def renewal_due(self, credential: Credential) -> bool:
        return self.clock() >= self.renewal_time(credential)

    async def renew(self, credential: Credential) -> Credential:
        """A new key and certificate for the same subject, authenticated by the current one."""
        current = credential.certificate()
        names = current.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        key = pki.generate_key(self.settings.key_type)
        async with self._est(credential) as est:
            cert = await est.simplereenroll(make_csr(str(names[0].value), key))
        log.info("renewed", old_serial=format(current.serial_number, "x"),
                 serial=format(cert.serial_number, "x"))
        return self._save(credential.name, cert, key)

    async def ensure_credentials(self) -> list[Credential]:
        credentials = self.credentials()
        if not credentials:
            credentials = [await self.enroll()]
        out = []
        for credential in credentials:
            if self.settings.enroll is not None and self.renewal_due(credential):
                try:
                    credential = await self.renew(credential)
                except EstClientError as exc:
                    log.warning("renewal_failed", credential=credential.name, status=exc.status,
                                reason=exc.reason)
            out.append(credential)
        return out

    # --- the gateway ---------------------------------------------------------------------------

    def _ssl_context(self, credential: Credential) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            cafile=str(self.settings.ca_file) if self.settings.ca_file else None)
        if self.settings.ca_file is None and self.settings.pin_sha256:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the pin below authenticates the server instead
        ctx.load_cert_chain(str(credential.cert_file), str(credential.key_file))
        return ctx

    async def _open(self, nursery: trio.Nursery, credential: Credential
                    ) -> trio_websocket.WebSocketConnection:
        ws, _ = await open_session(nursery, self._ssl_context(credential), self.settings.gateway,
                                   self.settings.server_name, self.settings.path,
                                   self.settings.pin_sha256)
        return ws

    async def connect(self, nursery: trio.Nursery, credentials: list[Credential]
                      ) -> tuple[trio_websocket.WebSocketConnection, Credential]:
        """Try each certificate in turn; remember the one that works."""
        failures = []
        for credential in credentials:
            try:
                with trio.fail_after(self.settings.timeout_s):
                    ws = await self._open(nursery, credential)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError,
                    trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as exc:
                failures.append(f"{credential.name}: {type(exc).__name__}: {exc}")
                log.info("certificate_refused", credential=credential.name, error=str(exc))
                continue
            self.remember(credential)
            log.info("connected", credential=credential.name)
            return ws, credential
        raise AgentError("no certificate was accepted: " + "; ".join(failures))

    async def once(self, message: str) -> str:
        credentials = await self.ensure_credentials()
        with _single_errors():
            async with trio.open_nursery() as nursery:
                ws, _ = await self.connect(nursery, credentials)
                try:
                    with trio.fail_after(self.settings.timeout_s):
                        await ws.send_message(message)
                        reply = await ws.get_message()
                finally:
                    await ws.aclose()
                nursery.cancel_scope.cancel()
        return reply if isinstance(reply, str) else reply.decode("utf-8", "replace")

    async def run_forever(self, *, max_sessions: int | None = None) -> None:
        """Hold a session; on any failure reconnect after an exponential back-off with full
        jitter (AWS's 'full jitter': uniform in [0, min(cap, base * 2^n)])."""
        attempt = 0
        sessions = 0
        while max_sessions is None or sessions < max_sessions:
            try:
                credentials = await self.ensure_credentials()
                with _single_errors():
                    async with trio.open_nursery() as nursery:
                        ws, credential = await self.connect(nursery, credentials)
                        attempt = 0
                        sessions += 1
                        if self.settings.enroll is not None:
                            nursery.start_soon(self._renew_when_due, ws, credential)
                        try:
                            while True:
                                await ws.get_message()
                        except trio_websocket.ConnectionClosed as exc:
                            log.info("session_closed", code=exc.reason.code if exc.reason else None,
                                     reason=exc.reason.reason if exc.reason else None)
                        nursery.cancel_scope.cancel()
            except (AgentError, EstClientError) as exc:
                log.warning("agent_retry", error=str(exc))
            attempt += 1
            await trio.sleep(random.uniform(0, min(MAX_BACKOFF_S, 0.5 * 2 ** attempt)))

    async def _renew_when_due(self, ws: trio_websocket.WebSocketConnection,
                              credential: Credential) -> None:
        """During a session: renew when the window opens, then end the session so the agent
        reconnects with the new certificate."""
        wait = (self.renewal_time(credential) - self.clock()).total_seconds()
        await trio.sleep(max(0.0, wait))
        try:
            await self.renew(credential)
        except EstClientError as exc:
            log.warning("renewal_failed", credential=credential.name, reason=exc.reason)
            return
        await ws.aclose(1000, "renewed")


async def open_session(
    nursery: trio.Nursery, context: ssl.SSLContext, gateway: tuple[str, int], server_name: str,
    path: str, pin_sha256: str | None = None,
) -> tuple[trio_websocket.WebSocketConnection, float]:
    """Open one WebSocket session over mTLS to the gateway: TCP, TLS (server checked by
    ``context`` and/or the public-key pin), then the upgrade, whose background task runs in
    ``nursery``. Returns the session and the seconds the TCP + TLS part took. Refusals raise
    ``OSError``, ``trio.BrokenResourceError``, ``ssl.SSLError``, ``AgentError`` or
    ``trio_websocket.HandshakeError``; the caller bounds the whole with a deadline."""
    started = trio.current_time()
    host, port = gateway
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    try:
        await stream.do_handshake()
        tls_s = trio.current_time() - started
        if pin_sha256:
            der = stream.getpeercert(binary_form=True)
            pin = pin_sha256.lower().replace(":", "")
            if not der or spki_sha256(x509.load_der_x509_certificate(der)) != pin:
                raise AgentError("the server's public key does not match the pin")
        watched = _FailFast(stream)
        ws: trio_websocket.WebSocketConnection | None = None
        async with trio.open_nursery() as race:

            async def upgrade() -> None:
                nonlocal ws
                ws = await trio_websocket.wrap_client_stream(
                    nursery, watched, server_name, path)  # type: ignore[arg-type]
                race.cancel_scope.cancel()

            async def transport_failed() -> None:
                await watched.failed.wait()
                race.cancel_scope.cancel()

            race.start_soon(upgrade)
            race.start_soon(transport_failed)
        if ws is None:
            # Under TLS 1.3 a refused certificate shows only on the first read.
            raise trio.BrokenResourceError("the gateway refused the connection")
        return ws, tls_s
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@contextlib.contextmanager
def _single_errors() -> Iterator[None]:
    """Trio nurseries wrap errors in exception groups; the agent's callers want the error."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


class _FailFast(trio.abc.Stream):
    """A stream that signals ``failed`` when reading from it fails or ends, so a WebSocket
    upgrade waiting on it can be abandoned at once (trio-websocket's client otherwise waits for
    its open handshake until the deadline when the server refuses after the TLS handshake)."""

    def __init__(self, inner: trio.SSLStream[trio.SocketStream]) -> None:
        self.inner = inner
        self.failed = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.inner.receive_some(max_bytes)
        except BaseException:
            self.failed.set()
            raise
        if not data:
            self.failed.set()
        return data

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    async def aclose(self) -> None:
        await self.inner.aclose()
