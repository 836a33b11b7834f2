"""``switch agent``: the reference endpoint agent.

It keeps its credentials in a directory of its own (``certs/NAME.pem`` + ``NAME.key``, keys mode
0600; ``certs/NAME.json``, mode 0644, the renew-before window the enrollment port named with that
certificate; and ``preferred``, the name of the certificate that last worked), and:

1. enrolls over EST with a provisioning key when it has no certificate it can use (the key pair is
   made here and never leaves the machine);
2. renews with ``simplereenroll`` once the renew-before window of its certificate opens, at start
   or during a session (then it reconnects with the new certificate). The window is
   ``--renew-before`` when given, else the one the enrollment port named with the certificate
   (``Switch-Renew-Before``: the issuing profile's ``renew_before``), else a third of the
   certificate's lifetime (step-ca's default: ``step ca renew --daemon`` renews after two thirds);
   never more than half the lifetime, so that a certificate cut short by its issuer's expiry is
   not renewed as soon as it is issued;
3. connects to the gateway, trying its certificates in turn, the one that worked last time first,
   and remembers the one that works (seed 000);
4. holds the session, and reconnects with exponential back-off and full jitter when it drops;
5. authenticates the server by a CA file or by the SHA-256 of its public key (seed 002 pinning),
   checked before any request or message is sent over the connection.

``--once MESSAGE`` sends one message, prints the reply and exits (for scripts and tests).

Theory of operation of a session (``open_session``, shared with ``switch loadtest``): TCP, TLS,
the pin, then a WebSocket upgrade by trio-websocket, whose reader task runs in the caller's
nursery. trio-websocket lets two things escape that task into the nursery, where they would end
every other task in it (for the load test, a whole worker process): a refused upgrade
(``ConnectionRejected``) and wsproto's ``LocalProtocolError`` when the reader answers a server
Ping after this side started closing (trio-websocket issue #184, open upstream). ``AgentConnection``
contains both: a refused upgrade is raised by ``open_session`` itself, a Ping during the close is
not answered (the close handshake is under way; wsproto sends nothing but a Close then), and any
other wsproto protocol error in the reader ends that session alone as an abnormal closure,
recorded in ``AgentConnection.protocol_error``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import structlog
import trio
import trio_websocket
import wsproto
import wsproto.events
import wsproto.utilities
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from wsproto.connection import ConnectionState

from gateway.client import pki
from gateway.client.est_client import (
    EstClient,
    EstClientError,
    EstServer,
    Issued,
    make_csr,
    spki_sha256,
)

log = structlog.get_logger("switch.agent")

PREFERRED = "preferred"
#: ``certs/NAME.json``: per-certificate state (the server's renew-before window), bound to the
#: certificate by its serial, so that a file left from another certificate is never applied.
STATE_SUFFIX = ".json"
#: Without ``--renew-before`` or a window from the server (a certificate from before Switch told
#: it, another EST server): renew when this share of the lifetime is left, as step-ca does.
FALLBACK_RENEW_SHARE = 1 / 3
#: Back-off: the n-th consecutive failure waits uniform(0, min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2^n)).
BACKOFF_BASE_S = 0.5
MAX_BACKOFF_S = 60.0
#: A session held at least this long resets the back-off; one the gateway or the upstream ends at
#: once counts as a failure, so that it cannot turn into a reconnect loop at the shortest delay.
STABLE_SESSION_S = MAX_BACKOFF_S
#: Retry-After from the enrollment port is obeyed up to this long.
MAX_RETRY_AFTER_S = 3600.0
#: A renewal the server refused (not a transport failure or 5xx/429) is tried again this much later
#: during a session: the refusal is a decision (suspended key, ...), not a glitch.
RENEW_RETRY_AFTER_REFUSAL_S = 3600.0


class AgentError(Exception):
    """The agent cannot go on (no credentials and no key to enroll with, every certificate
    refused, the server not trusted, ...). The message says what to fix."""


class ServerNotTrusted(AgentError):
    """The server failed authentication (CA file or public-key pin): nothing is sent to it and no
    other certificate is tried, since none would change that."""


class GatewayUnreachable(AgentError):
    """No connection to the gateway at all (refused, unresolvable, no answer in time)."""


@attrs.frozen
class AgentSettings:
    directory: Path
    server_name: str
    gateway: tuple[str, int]
    enroll: tuple[str, int] | None = None
    ca_file: Path | None = None
    pin_sha256: str | None = None
    key_secret: str | None = attrs.field(default=None, repr=False)
    common_name: str | None = None
    path: str = "/"
    #: ``--renew-before``: overrides the window the enrollment port names (see ``renewal_window``).
    renew_before: dt.timedelta | None = None
    key_type: str = "ec-p256"
    timeout_s: float = 20.0


@attrs.frozen
class Credential:
    name: str
    cert_file: Path
    key_file: Path
    cert: x509.Certificate = attrs.field(eq=False, repr=False)
    #: The renew-before window the enrollment port named with this certificate, if it did.
    renew_before: dt.timedelta | None = None

    def certificate(self) -> x509.Certificate:
        return self.cert

    def usable_at(self, now: dt.datetime) -> bool:
        return pki.validity_problem(self.cert, now) is None


def normalise_pin(pin: str) -> str:
    """A SHA-256 public-key pin as 64 lower-case hex digits (``:`` separators allowed)."""
    hexpin = pin.strip().lower().replace(":", "")
    if len(hexpin) != 64 or any(c not in "0123456789abcdef" for c in hexpin):
        raise AgentError(f"the pin must be the SHA-256 of the server's public key as 64 hex "
                         f"digits, not {pin!r}")
    return hexpin


def backoff_s(failures: int, rng: random.Random | None = None) -> float:
    """Full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015): uniform in
    [0, min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2^failures)], so a fleet that lost the gateway at once
    does not come back in lockstep. The exponent is clamped: an agent that fails for days must
    not overflow a float."""
    cap = min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2.0 ** min(max(failures, 0), 16))
    return (rng or random).uniform(0, cap)


class Agent:
    def __init__(self, settings: AgentSettings, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.settings = settings
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.certs_dir = settings.directory / "certs"
        #: how the last session ended (``closed_1000``, ``renewed``, ``protocol_error``, ...)
        self.last_session_end: str | None = None

    def check_settings(self) -> None:
        """Refuse at once what can never work: a malformed pin, an unreadable CA file."""
        if self.settings.pin_sha256 is not None:
            normalise_pin(self.settings.pin_sha256)
        if self.settings.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(self.settings.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise AgentError(f"cannot use the CA file {self.settings.ca_file}: {exc}") from exc

    # --- credentials ---------------------------------------------------------------------------

    def credentials(self) -> list[Credential]:
        """Every certificate with its key, the preferred one first, then by name. A pair that
        does not load (or whose key is not the certificate's) is left out with a warning; a key
        file others may read is tightened to 0600."""
        found: list[Credential] = []
        for cert_file in sorted(self.certs_dir.glob("*.pem")):
            key_file = cert_file.with_suffix(".key")
            if not key_file.exists():
                continue
            try:
                cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
                key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("credential_unreadable", credential=cert_file.stem, error=str(exc))
                continue
            if key.public_key() != cert.public_key():
                log.warning("credential_key_mismatch", credential=cert_file.stem)
                continue
            if key_file.stat().st_mode & 0o077:
                log.warning("key_file_tightened", file=str(key_file))
                key_file.chmod(0o600)
            found.append(Credential(cert_file.stem, cert_file, key_file, cert,
                                    self._stored_window(cert_file, cert)))
        preferred = self.preferred()
        return sorted(found, key=lambda c: c.name != preferred)

    def preferred(self) -> str | None:
        try:
            return (self.settings.directory / PREFERRED).read_text().strip() or None
        except FileNotFoundError:
            return None

    def remember(self, credential: Credential) -> None:
        """Write ``preferred`` atomically (a crash leaves the old name or the new one)."""
        target = self.settings.directory / PREFERRED
        tmp = target.with_name(f".{PREFERRED}.tmp")
        tmp.write_text(credential.name + "\n")
        tmp.replace(target)

    @staticmethod
    def _stored_window(cert_file: Path, cert: x509.Certificate) -> dt.timedelta | None:
        """The window in ``NAME.json`` when it was stored for this very certificate (same
        serial); else ``None`` (no file: an older agent or a server that did not say)."""
        state_file = cert_file.with_suffix(STATE_SUFFIX)
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("credential_state_unreadable", credential=cert_file.stem, error=str(exc))
            return None
        if not isinstance(state, dict) or state.get("serial") != format(cert.serial_number, "x"):
            return None  # another certificate's: a crash between the renames of _save
        seconds = state.get("renew_before_s")
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            log.warning("credential_state_unreadable", credential=cert_file.stem,
                        error=f"renew_before_s is not a number of seconds: {seconds!r}")
            return None
        return dt.timedelta(seconds=seconds)

    def _save(self, name: str, issued: Issued, key: pki.PrivateKey) -> Credential:
        cert = issued.certificate
        self.certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file, cert_file = self.certs_dir / f"{name}.key", self.certs_dir / f"{name}.pem"
        state_file = cert_file.with_suffix(STATE_SUFFIX)
        # Every file is complete before any is replaced; a crash between the renames leaves a
        # pair whose key is not the certificate's, which credentials() skips, or a state file
        # of the previous certificate, which its serial keeps from being applied.
        new_key = key_file.with_name(f"{key_file.name}.new")
        pki.write_private(new_key, pki.key_pem(key))
        tmp = cert_file.with_name(f".{cert_file.name}.tmp")
        tmp.write_bytes(pki.cert_pem(cert))
        tmp_state = state_file.with_name(f".{state_file.name}.tmp")
        if issued.renew_before is not None:
            tmp_state.write_text(json.dumps({
                "serial": format(cert.serial_number, "x"),
                "renew_before_s": int(issued.renew_before.total_seconds())}) + "\n")
            tmp_state.chmod(0o644)  # not a secret
        new_key.replace(key_file)
        tmp.replace(cert_file)
        if issued.renew_before is not None:
            tmp_state.replace(state_file)
        else:
            state_file.unlink(missing_ok=True)
        return Credential(name, cert_file, key_file, cert, issued.renew_before)

    def _est(self, client_cert: Credential | None = None) -> EstClient:
        if self.settings.enroll is None:
            raise AgentError("no enrollment address (--enroll)")
        host, port = self.settings.enroll
        pin = normalise_pin(self.settings.pin_sha256) if self.settings.pin_sha256 else None
        return EstClient(EstServer(host, port, self.settings.server_name, self.settings.ca_file, pin),
                         timeout_s=self.settings.timeout_s,
                         client_cert=(client_cert.cert_file, client_cert.key_file) if client_cert else None)

    async def enroll(self, common_name: str | None = None) -> Credential:
        """A first certificate, with the provisioning key."""
        common_name = common_name or self.settings.common_name
        if not self.settings.key_secret or not common_name:
            raise AgentError("no usable certificate: a provisioning key (--key-file) and a name "
                             "(--name) are needed to enroll")
        key = pki.generate_key(self.settings.key_type)
        async with self._est() as est:
            issued = await est.simpleenroll_issued(make_csr(common_name, key),
                                                   self.settings.key_secret)
        cert = issued.certificate
        log.info("enrolled", serial=format(cert.serial_number, "x"),
                 not_after=cert.not_valid_after_utc.isoformat(),
                 renew_before_s=_seconds(issued.renew_before))
        return self._save("provisioned", issued, key)

    def renewal_window(self, credential: Credential) -> tuple[dt.timedelta, str]:
        """How long before expiry to renew, and where that came from: ``--renew-before``
        (``command_line``), else the window the enrollment port named with the certificate
        (``server``), else a third of its lifetime (``lifetime``). At most half the lifetime."""
        cert = credential.cert
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        if self.settings.renew_before is not None:
            window, source = self.settings.renew_before, "command_line"
        elif credential.renew_before is not None:
            window, source = credential.renew_before, "server"
        else:
            window, source = lifetime * FALLBACK_RENEW_SHARE, "lifetime"
        return min(window, lifetime / 2), source

    def renewal_time(self, credential: Credential) -> dt.datetime:
        """When the renew-before window opens (``renewal_window`` before expiry)."""
        return credential.cert.not_valid_after_utc - self.renewal_window(credential)[0]

    def renewal_due(self, credential: Credential) -> bool:
        return self.clock() >= self.renewal_time(credential)

    async def renew(self, credential: Credential) -> Credential:
        """A new key and certificate for the same subject, authenticated by the current one."""
        current = credential.cert
        names = current.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        key = pki.generate_key(self.settings.key_type)
        async with self._est(credential) as est:
            issued = await est.simplereenroll_issued(make_csr(str(names[0].value), key))
        cert = issued.certificate
        log.info("renewed", credential=credential.name, old_serial=format(current.serial_number, "x"),
                 serial=format(cert.serial_number, "x"), not_after=cert.not_valid_after_utc.isoformat(),
                 renew_before_s=_seconds(issued.renew_before))
        return self._save(credential.name, issued, key)

    async def ensure_credentials(self) -> list[Credential]:
        """The certificates to try: each renewed first if its window is open (a failed renewal
        keeps the current one); expired ones left out. With none left, enroll with the
        provisioning key when there is one, else say why nothing can connect."""
        out: list[Credential] = []
        for credential in self.credentials():
            if self.settings.enroll is not None and self.renewal_due(credential) \
                    and credential.usable_at(self.clock()):
                try:
                    credential = await self.renew(credential)
                except EstClientError as exc:
                    log.warning("renewal_failed", credential=credential.name, status=exc.status,
                                reason=exc.reason)
            out.append(credential)
        now = self.clock()
        usable = [c for c in out if c.usable_at(now)]
        if usable:
            return usable
        if self.settings.key_secret and self.settings.enroll is not None:
            if out:
                log.warning("no_usable_certificate", reenroll=True,
                            certificates=[f"{c.name}: {pki.validity_problem(c.cert, now)}" for c in out])
            names = [c.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME) for c in out
                     if c.name == "provisioned"]
            fallback = str(names[0][0].value) if names and names[0] else None
            return [await self.enroll(self.settings.common_name or fallback)]
        if out:
            raise AgentError("no usable certificate: " + "; ".join(
                f"{c.name}: {pki.validity_problem(c.cert, now)}" for c in out)
                + " (a provisioning key and --enroll would get a new one)")
        raise AgentError(f"no certificate in {self.certs_dir} and no provisioning key "
                         "(--key-file) and enrollment address (--enroll) to get one")

    # --- the gateway ---------------------------------------------------------------------------

    def _ssl_context(self, credential: Credential) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            cafile=str(self.settings.ca_file) if self.settings.ca_file else None)
        if self.settings.ca_file is None and self.settings.pin_sha256:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the pin, checked by open_session, authenticates it
        ctx.load_cert_chain(str(credential.cert_file), str(credential.key_file))
        return ctx

    async def _open(self, nursery: trio.Nursery, credential: Credential) -> AgentConnection:
        ws, _ = await open_session(nursery, self._ssl_context(credential), self.settings.gateway,
                                   self.settings.server_name, self.settings.path,
                                   self.settings.pin_sha256)
        return ws

    async def connect(self, nursery: trio.Nursery, credentials: list[Credential]
                      ) -> tuple[AgentConnection, Credential]:
        """Try each certificate in turn; remember the one that works. A server that is not
        trusted or a gateway that cannot be reached ends the attempt at once: another
        certificate would not change that."""
        failures = []
        host, port = self.settings.gateway
        for credential in credentials:
            try:
                with trio.fail_after(self.settings.timeout_s):
                    ws = await self._open(nursery, credential)
            except trio.TooSlowError as exc:
                raise GatewayUnreachable(f"no answer from the gateway at {host}:{port} within "
                                         f"{self.settings.timeout_s:g}s") from exc
            except OSError as exc:
                raise GatewayUnreachable(f"cannot reach the gateway at {host}:{port}: {exc}") from exc
            except SESSION_OPEN_ERRORS as exc:
                if _server_not_trusted(exc):
                    raise ServerNotTrusted(
                        f"the gateway's certificate is not trusted: {describe_error(exc)}") from exc
                failures.append(f"{credential.name}: {describe_error(exc)}")
                log.info("certificate_refused", credential=credential.name, error=describe_error(exc))
                continue
            self.remember(credential)
            log.info("connected", credential=credential.name)
            return ws, credential
        raise AgentError("no certificate was accepted: " + "; ".join(failures))

    async def once(self, message: str) -> str:
        """Connect, send ``message``, return the reply. Every failure is an ``AgentError`` whose
        message says what went wrong."""
        self.check_settings()
        try:
            credentials = await self.ensure_credentials()
        except EstClientError as exc:
            raise AgentError(explain_est_error(exc)) from exc
        with _single_errors():
            async with trio.open_nursery() as nursery:
                ws, _ = await self.connect(nursery, credentials)
                try:
                    with trio.fail_after(self.settings.timeout_s):
                        await ws.send_message(message)
                        reply = await ws.get_message()
                except trio.TooSlowError as exc:
                    raise AgentError(f"no reply within {self.settings.timeout_s:g}s") from exc
                except trio_websocket.ConnectionClosed as exc:
                    raise AgentError("the gateway closed the session before replying: "
                                     f"{describe_error(exc)}") from exc
                finally:
                    with trio.move_on_after(self.settings.timeout_s):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        return reply if isinstance(reply, str) else reply.decode("utf-8", "replace")

    async def run_forever(self, *, max_sessions: int | None = None,
                          rng: random.Random | None = None) -> None:
        """Hold a session; when it ends or cannot be opened, wait ``backoff_s(failures)`` (at
        least the enrollment port's Retry-After) and try again. ``failures`` counts the attempts
        since the last session held ``STABLE_SESSION_S``."""
        self.check_settings()
        failures = 0
        sessions = 0
        while True:
            at_least = 0.0
            try:
                credentials = await self.ensure_credentials()
                started = trio.current_time()
                end = await self._hold(credentials)
                sessions += 1
                held = trio.current_time() - started
                failures = 0 if held >= STABLE_SESSION_S else failures
                log.info("session_closed", reason=end, held_s=round(held, 3))
            except EstClientError as exc:
                log.warning("agent_retry", error=explain_est_error(exc))
                at_least = min(float(exc.retry_after or 0), MAX_RETRY_AFTER_S)
            except AgentError as exc:
                log.warning("agent_retry", error=str(exc))
            if max_sessions is not None and sessions >= max_sessions:
                return
            failures += 1
            await trio.sleep(max(backoff_s(failures, rng), at_least))

    async def _hold(self, credentials: list[Credential]) -> str:
        """One session, until it ends; how it ended."""
        with _single_errors():
            async with trio.open_nursery() as nursery:
                ws, credential = await self.connect(nursery, credentials)
                try:
                    if self.settings.enroll is not None:
                        nursery.start_soon(self._renew_when_due, ws, credential)
                    with contextlib.suppress(trio_websocket.ConnectionClosed):
                        while True:
                            await ws.get_message()
                finally:
                    nursery.cancel_scope.cancel()
                    await ws.aclose()  # a no-op once closed; when cancelled, closes the socket
        self.last_session_end = ws.end_reason()
        return self.last_session_end

    async def _renew_when_due(self, ws: AgentConnection, credential: Credential) -> None:
        """During a session: renew when the window opens (retrying with back-off after a
        transport failure, an hour later after a refusal), then end the session so that the
        agent reconnects with the new certificate."""
        window, source = self.renewal_window(credential)
        at = credential.cert.not_valid_after_utc - window
        log.info("renewal_scheduled", credential=credential.name, at=at.isoformat(),
                 renew_before_s=_seconds(window), source=source)
        await trio.sleep(max(0.0, (at - self.clock()).total_seconds()))
        failures = 0
        while True:
            try:
                await self.renew(credential)
                break
            except EstClientError as exc:
                failures += 1
                transient = exc.status == 0 or exc.status >= 500 or exc.status == 429
                log.warning("renewal_failed", credential=credential.name, status=exc.status,
                            reason=exc.reason, retry="backoff" if transient else "later")
                delay = backoff_s(failures) if transient else RENEW_RETRY_AFTER_REFUSAL_S
                await trio.sleep(max(delay, min(float(exc.retry_after or 0), MAX_RETRY_AFTER_S)))
        ws.ended_by = "renewed"
        with trio.move_on_after(self.settings.timeout_s):
            await ws.aclose(1000, "renewed")


def _seconds(window: dt.timedelta | None) -> int | None:
    return None if window is None else int(window.total_seconds())


def explain_est_error(exc: EstClientError) -> str:
    if exc.status == 202:
        return (f"enrollment is waiting for an administrator's approval (ask again in "
                f"{exc.retry_after or 60}s)")
    if exc.status == 0:
        return f"the enrollment port could not be used: {exc.reason}"
    return f"the enrollment port refused: {exc.status} {exc.reason}"


# --- one session (shared with switch loadtest) -----------------------------------------------


class AgentConnection(trio_websocket.WebSocketConnection):
    """A client ``WebSocketConnection`` whose reader task cannot take its nursery down (see the
    module's theory of operation). Relies on trio-websocket internals (``_reader_task``,
    ``_open_handshake``, ``_wsproto``, ``_stream``, ``_abort_web_socket`` and two event handlers,
    as of 0.12); tests/integration/test_agent.py exercises each path against the installed version."""

    def __init__(self, stream: trio.abc.Stream, host: str, path: str) -> None:
        super().__init__(stream, wsproto.WSConnection(wsproto.ConnectionType.CLIENT),
                         host=host, path=path)
        #: the wsproto protocol error that ended the session, if one did
        self.protocol_error: str | None = None
        #: a refused upgrade, raised by open_session instead of from the reader task
        self.rejection: trio_websocket.ConnectionRejected | None = None
        #: server Pings that arrived after our Close and were not answered (issue #184)
        self.pings_while_closing = 0
        #: set by this side's code for an end it chose (``renewed``)
        self.ended_by: str | None = None
        #: this side's Close got no answer: the connection dropped (or could not carry it) first
        self.close_unanswered = False
        self.accepted = False
        self.reader_done = trio.Event()

    async def _handle_accept_connection_event(self, event: wsproto.events.AcceptConnection) -> None:
        self.accepted = True
        await super()._handle_accept_connection_event(event)

    async def _handle_ping_event(self, event: wsproto.events.Ping) -> None:
        if self._wsproto.state is not ConnectionState.OPEN:
            self.pings_while_closing += 1
            return
        await super()._handle_ping_event(event)

    async def _abort_web_socket(self) -> None:
        # trio-websocket keeps the code of the Close this side sent (1000) when the connection
        # then drops before the peer's Close arrives: the close handshake did not happen.
        if self._wsproto.state is ConnectionState.LOCAL_CLOSING:
            self.close_unanswered = True
        await super()._abort_web_socket()

    async def run_reader(self) -> None:
        """trio-websocket's reader task, contained: a refused upgrade is kept for open_session,
        a protocol error ends this session as an abnormal closure (1006)."""
        try:
            await self._reader_task()
        except trio_websocket.ConnectionRejected as exc:
            self.rejection = exc
        except wsproto.utilities.ProtocolError as exc:
            self.protocol_error = str(exc)
            log.info("session_protocol_error", error=str(exc))
            await self._abort_web_socket()  # wakes aclose() and get_message() with 1006
            await trio.aclose_forcefully(self._stream)
        finally:
            self.reader_done.set()
            self._open_handshake.set()  # wakes open_session, which checks how it ended

    def end_reason(self) -> str:
        """How the session ended, for logs and the load test's counts: ``protocol_error``,
        what this side chose (``renewed``), else ``closed_<code>`` (1006: the connection
        dropped without a close, or before the peer answered this side's Close)."""
        if self.protocol_error is not None:
            return "protocol_error"
        if self.ended_by is not None:
            return self.ended_by
        if self.close_unanswered:
            return "closed_1006"
        reason = self.closed
        return f"closed_{reason.code if reason else 1006}"


#: What opening a session raises when it does not work out (see ``open_session``).
SESSION_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    OSError, trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, AgentError,
    trio_websocket.HandshakeError, trio_websocket.ConnectionClosed)


async def open_session(
    nursery: trio.Nursery, context: ssl.SSLContext, gateway: tuple[str, int], server_name: str,
    path: str, pin_sha256: str | None = None,
) -> tuple[AgentConnection, float]:
    """Open one WebSocket session over mTLS to the gateway: TCP, TLS (server checked by
    ``context`` and/or the public-key pin), then the upgrade, whose reader task runs in
    ``nursery`` and never raises into it. Returns the session and the seconds the TCP + TLS part
    took. Failures raise one of ``SESSION_OPEN_ERRORS``: ``OSError`` (no connection),
    ``trio.BrokenResourceError`` (TLS refused, or the connection dropped; ``__cause__`` says how
    when known), ``ServerNotTrusted`` (the pin), ``trio_websocket.ConnectionRejected`` (an HTTP
    refusal of the upgrade). The caller bounds the whole with a deadline."""
    started = trio.current_time()
    host, port = gateway
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name)
    try:
        await stream.do_handshake()
        tls_s = trio.current_time() - started
        if pin_sha256:
            der = stream.getpeercert(binary_form=True)
            if not der or spki_sha256(x509.load_der_x509_certificate(der)) != normalise_pin(pin_sha256):
                raise ServerNotTrusted("the server's public key does not match the pin")
        watched = _Recorded(stream)
        ws = AgentConnection(watched, server_name, path)
        nursery.start_soon(ws.run_reader)
        await ws._open_handshake.wait()
        if ws.rejection is not None:
            raise ws.rejection
        if not ws.accepted:
            # Under TLS 1.3 a refused certificate shows only on the first read or write.
            raise trio.BrokenResourceError(
                "the gateway closed the connection before the upgrade") from watched.error
        return ws, tls_s
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


def describe_error(exc: BaseException) -> str:
    """A short, specific text for a failure to open or hold a session."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        return f"upgrade refused with HTTP {exc.status_code}" + (f": {body[:100]}" if body else "")
    if isinstance(exc, trio_websocket.ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "closed"
        return f"closed with {reason.code}" + (f" {reason.reason}" if reason.reason else "")
    cause = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        return f"{exc}: {type(cause).__name__}: {cause}" if str(exc) else f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}"


def _server_not_trusted(exc: BaseException) -> bool:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ServerNotTrusted | ssl.SSLCertVerificationError):
            return True
        current = current.__cause__
    return False


@contextlib.contextmanager
def _single_errors() -> Iterator[None]:
    """Trio nurseries wrap errors in exception groups; the agent's callers want the error."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


class _Recorded(trio.abc.Stream):
    """Passes a stream through and keeps the first error reading or writing raised:
    trio-websocket swallows it, and a refused certificate is only told apart from a dropped
    connection by it."""

    def __init__(self, inner: trio.SSLStream[trio.SocketStream]) -> None:
        self.inner = inner
        self.error: BaseException | None = None

    def _keep(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc.__cause__ if exc.__cause__ is not None else exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._keep(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._keep(exc)
            raise

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    async def aclose(self) -> None:
        await self.inner.aclose()

