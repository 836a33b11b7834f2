"""``switch agent``: the reference endpoint agent's life: connect to the gateway trying its
certificates in turn, hold the session, renew during it, and reconnect with back-off.

The agent keeps its credentials in a directory of its own (``gateway.client.credentials``) and:

1. enrolls over EST with a provisioning key when it has no certificate it can use, and renews
   with ``simplereenroll`` once the renew-before window of its certificate opens, at start or
   during a session (then it reconnects with the new certificate) (``gateway.client.enrollment``);
2. connects to the gateway, trying its certificates in turn, the one that worked last time first,
   and remembers the one that works (seed 000);
3. holds the session (``gateway.client.session``), and reconnects with exponential back-off and
   full jitter when it drops (``gateway.client.backoff``);
4. authenticates the server by a CA file or by the SHA-256 of its public key (seed 002 pinning),
   checked before any request or message is sent over the connection;
5. acts on the gateway's TLS alert ``certificate_revoked``: that certificate is marked and never
   tried again, and with a provisioning key the agent enrolls anew at once and reconnects; when
   that key is revoked too (or there is none) it stops (``AgentStopped``) instead of retrying
   for ever.

``--once MESSAGE`` sends one message, prints the reply and exits (for scripts and tests).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import ssl
from collections.abc import Callable, Iterator

import structlog
import trio
import trio_websocket

from gateway.client.agent_settings import (
    AgentError,
    AgentSettings,
    AgentStopped,
    CertificateRevoked,
    GatewayUnreachable,
    ServerNotTrusted,
    normalise_pin,
)
from gateway.client.backoff import Reconnects, backoff_s
from gateway.client.credentials import Credential, CredentialStore
from gateway.client.enrollment import Enrollment, explain_est_error, whole_seconds
from gateway.client.est_client import EstClientError
from gateway.client.session import (
    SESSION_OPEN_ERRORS,
    AgentConnection,
    describe_error,
    open_session,
    server_not_trusted,
    tls_alert,
)

#: What the command line imports from here (the rest lives in the modules named above).
__all__ = ["Agent", "AgentError", "AgentSettings", "AgentStopped", "GatewayUnreachable",
           "ServerNotTrusted"]

log = structlog.get_logger("switch.agent")

#: Retry-After from the enrollment port is obeyed up to this long.
MAX_RETRY_AFTER_S = 3600.0
#: A renewal the server refused (not a transport failure or 5xx/429) is tried again this much later
#: during a session: the refusal is a decision (suspended key, ...), not a glitch.
RENEW_RETRY_AFTER_REFUSAL_S = 3600.0


class Agent:
    def __init__(self, settings: AgentSettings, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.settings = settings
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.store = CredentialStore(settings.directory)
        self.enrollment = Enrollment(settings, self.store, self.clock)
        self.certs_dir = self.store.certs_dir
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

    # --- credentials (gateway.client.credentials, gateway.client.enrollment) ---------------------

    def credentials(self) -> list[Credential]:
        """Every usable pair on disk, the preferred one first (``CredentialStore.credentials``)."""
        return self.store.credentials()

    def remember(self, credential: Credential) -> None:
        self.store.remember(credential)

    def renewal_window(self, credential: Credential) -> tuple[dt.timedelta, str]:
        return self.enrollment.renewal_window(credential)

    def renewal_time(self, credential: Credential) -> dt.datetime:
        return self.enrollment.renewal_time(credential)

    async def enroll(self, common_name: str | None = None) -> Credential:
        return await self.enrollment.enroll(common_name)

    async def renew(self, credential: Credential) -> Credential:
        return await self.enrollment.renew(credential)

    async def ensure_credentials(self) -> list[Credential]:
        return await self.enrollment.ensure_credentials()

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
        revoked = False
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
                if server_not_trusted(exc):
                    raise ServerNotTrusted(
                        f"the gateway's certificate is not trusted: {describe_error(exc)}") from exc
                failures.append(f"{credential.name}: {describe_error(exc)}")
                alert = tls_alert(exc)
                if alert == "certificate_revoked":
                    # The gateway says so: this certificate will never connect again.
                    self.store.mark_revoked(credential)
                    revoked = True
                    log.warning("certificate_revoked", credential=credential.name,
                                serial=format(credential.cert.serial_number, "x"))
                    continue
                log.info("certificate_refused", credential=credential.name, alert=alert,
                         error=describe_error(exc))
                continue
            self.remember(credential)
            log.info("connected", credential=credential.name)
            return ws, credential
        message = "no certificate was accepted: " + "; ".join(failures)
        raise CertificateRevoked(message) if revoked else AgentError(message)

    async def connect_or_reenroll(self, nursery: trio.Nursery, credentials: list[Credential]
                                  ) -> tuple[AgentConnection, Credential]:
        """``connect``; when a certificate was refused as revoked and none was accepted, once
        more with the credentials left (``ensure_credentials``: it enrolls anew with the
        provisioning key, or raises ``AgentStopped`` when nothing can work)."""
        try:
            return await self.connect(nursery, credentials)
        except CertificateRevoked as exc:
            log.warning("reenrolling", error=str(exc))
            try:
                credentials = await self.ensure_credentials()
            except EstClientError as est_exc:
                raise AgentError(explain_est_error(est_exc)) from est_exc
            return await self.connect(nursery, credentials)

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
                ws, _ = await self.connect_or_reenroll(nursery, credentials)
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
        """Hold a session; when it ends or cannot be opened, wait the back-off of
        ``gateway.client.backoff.Reconnects`` (full jitter; at least the enrollment port's
        Retry-After) and try again. Its failures count the attempts since the last session held
        ``STABLE_SESSION_S`` (a minute). Returns (raises ``AgentStopped``) when nothing can
        work any more: its certificates and its provisioning key were revoked."""
        self.check_settings()
        reconnects = Reconnects(rng)
        sessions = 0
        while True:
            at_least = 0.0
            held: float | None = None
            try:
                credentials = await self.ensure_credentials()
                started = trio.current_time()
                end = await self._hold(credentials)
                sessions += 1
                held = trio.current_time() - started
                log.info("session_closed", reason=end, held_s=round(held, 3))
            except EstClientError as exc:
                log.warning("agent_retry", error=explain_est_error(exc))
                at_least = min(float(exc.retry_after or 0), MAX_RETRY_AFTER_S)
            except AgentStopped as exc:
                log.error("agent_stopped", error=str(exc))
                raise
            except AgentError as exc:
                log.warning("agent_retry", error=str(exc))
            if max_sessions is not None and sessions >= max_sessions:
                return
            delay = reconnects.after_failure() if held is None else reconnects.after_session(held)
            await trio.sleep(max(delay, at_least))

    async def _hold(self, credentials: list[Credential]) -> str:
        """One session, until it ends; how it ended."""
        with _single_errors():
            async with trio.open_nursery() as nursery:
                ws, credential = await self.connect_or_reenroll(nursery, credentials)
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
                 renew_before_s=whole_seconds(window), source=source)
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



@contextlib.contextmanager
def _single_errors() -> Iterator[None]:
    """Trio nurseries wrap errors in exception groups; the agent's callers want the error."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
