"""The console's sign-in sessions: signing in with an operator's name and password, the session
cookie as the API's second kind of credential (``SessionCookie``, kind ``session``), its CSRF
token, and signing out.

Theory of operation. Signing in (``sign_in``) checks the source's failure count first (the
store-backed ``SharedFailureLimiter``, under its own key ``signin:ADDRESS``: five failures a
minute from one address, on every process and host together), then the password with argon2id,
doing the same work whether or not the name is an operator's or has a password
(``enroll.operators.password_matches``), in a thread of its own (two at a time: argon2's
memory is bounded and the store's thread is never held by it). A failure is counted,
audited (``operator.signin_failed``, actor ``anonymous``, the name typed and the address) and
answered with the same words whatever was wrong. A success makes a new session id (256 random
bits, ``sws_...``; a new one at every sign-in, so an id planted before sign-in is worthless),
keeps only its SHA-256 in the store with its idle timeout and absolute expiry (from ``[api]``
at sign-in time), audits ``operator.signed_in`` and hands the id to the browser in a cookie
(``session_cookie``: ``__Host-`` prefixed, ``Secure``, ``HttpOnly``, ``SameSite=Strict``,
``Path=/``, expiring with the session).

Each request with the cookie (``SessionCookie.identify``) reads the session joined with its
operator from the store: no cache, so signing out, removing the operator or changing its
password (which deletes its sessions in the same transaction) refuse the very next request on
every host, and a role or tenant change applies to it. An expired session is deleted and
refused (``session_expired``, not counted as a guess); a session seen again after
``TOUCH_INTERVAL_S`` has its idle time restarted (one small write at most a minute).

CSRF: a session cookie is sent by the browser on its own, so a change made with it must prove
it came from the console's own page (``SessionCookie.proves_intent``, checked by
``gateway.api.auth.authorize``): the synchronizer token ``X-CSRF-Token`` (HMAC-SHA256 of the
session id: bound to the session, never stored, unknown to whoever reads the store), and, when
the browser sends them, ``Origin`` equal to the listener's own origin and
``Sec-Fetch-Site: same-origin``. ``SameSite=Strict`` keeps the cookie off cross-site requests
in the first place.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from typing import ClassVar

import attrs
import trio

from config.model import ApiSettings
from enroll import operators
from enroll.audit import Action
from enroll.errors import (
    BadCredentials,
    InvalidOperator,
    MalformedCredentials,
    RateLimited,
    UnknownOperator,
)
from enroll.operator_admin import OperatorAdmin
from enroll.operators import OperatorRecord
from enroll.store import ConsoleSession
from gateway.api.auth import Access, Principal, authorize
from gateway.api.errors import SessionExpired
from gateway.api.routes import ApiContext

#: The cookie: ``__Host-`` makes the browser refuse it unless Secure, Path=/ and without Domain.
COOKIE = "__Host-switch-session"
#: The header the console's script sends the CSRF token in (the sign-out form: a field).
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_PREFIX = "sws_"
_SESSION_RE = re.compile(r"sws_[A-Za-z0-9_-]{43}")
_CSRF_LABEL = b"switch console csrf v1"
#: A session used again after this long has its idle time restarted (a write); within it, not.
TOUCH_INTERVAL_S = 60
#: Longer input is not a password anyone set (argon2 is not given megabytes to hash).
MAX_PASSWORD_CHARS = 1024
#: Password checks at once in one process (``sign_in``'s ``hashing``): argon2id's RFC 9106
#: low-memory profile takes 64 MiB each.
HASHING_AT_ONCE = 2
#: Who the audit log says failed to sign in (the address is in the entry's details).
ANONYMOUS = "anonymous"
FAILED_MESSAGE = "the operator name or the password is wrong"


def new_session_id() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def session_hash(session_id: str) -> str:
    """What the store keeps of a session id."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


def csrf_token(session_id: str) -> str:
    """The session's CSRF token: derived from its id, so bound to it and stored nowhere."""
    mac = hmac.new(session_id.encode("utf-8", "surrogateescape"), _CSRF_LABEL, hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def same_origin(headers: Mapping[str, str]) -> bool:
    """What the browser says of where a request came from, where it says anything: ``Origin``
    must be this listener's own (``https://`` and the ``Host`` asked for), ``Sec-Fetch-Site``
    must be ``same-origin``. Clients that send neither (not browsers) pass."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() != "same-origin":
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    host = headers.get("host", "").strip().lower()
    return bool(host) and origin.strip().lower() == f"https://{host}"


class SessionCookie:
    """The console's session cookie (see the module docstring)."""

    kind: ClassVar[str] = "session"

    def carried(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        return COOKIE in cookies

    def identify(self, headers: Mapping[str, str], cookies: Mapping[str, str],
                 operators: OperatorAdmin) -> OperatorRecord | None:
        session_id = cookies.get(COOKIE, "")
        if not _SESSION_RE.fullmatch(session_id):
            raise MalformedCredentials("the console session cookie is not one Switch made")
        store = operators.store
        now = int(operators.authority.clock().timestamp())
        found = store.console_session(session_hash(session_id))
        if found is None:
            return None
        session, record = found
        if session.expired(now):
            store.end_console_session(session.id_hash, actor=None, ts=now)
            raise SessionExpired("the console session has expired: sign in again")
        if now - session.last_seen_at >= TOUCH_INTERVAL_S:
            store.touch_console_session(session.id_hash, now)
        return record

    def proves_intent(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        session_id = cookies.get(COOKIE, "")
        expected = csrf_token(session_id)
        sent = headers.get(CSRF_HEADER, "")
        token_ok = hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), expected.encode())
        return token_ok and bool(_SESSION_RE.fullmatch(session_id)) and same_origin(headers)


@attrs.frozen
class SignedIn:
    session_id: str
    session: ConsoleSession
    principal: Principal

    @property
    def max_age_s(self) -> int:
        return self.session.expires_at - self.session.created_at


def _signin_key(source: str) -> str:
    return f"signin:{source}"


def _name_for_audit(name: str) -> str | None:
    """The name typed, when it could be an operator's (anything else is not recorded: it may
    be a password typed in the wrong field)."""
    try:
        return operators.validate_name(name)
    except InvalidOperator:
        return None


async def sign_in(api: ApiContext, settings: ApiSettings, name: str, password: str,
                  source: str, hashing: trio.CapacityLimiter) -> SignedIn:
    """A new session for operator ``name`` if ``password`` is its console password; else
    ``RateLimited`` (the source failed too often: nothing checked) or ``BadCredentials`` (the
    same words whatever was wrong; counted and audited). The password is checked in a thread
    taken under ``hashing`` (at most ``HASHING_AT_ONCE``), never the store's."""
    admin = api.authenticator.operators
    limiter = api.authenticator.limiter
    store = admin.store
    key = _signin_key(source)
    wait = await api.run(limiter.retry_after, key, time.time())
    if wait is not None:
        raise RateLimited("too many failed sign-ins from this address", retry_after=wait)
    name = name[:operators.MAX_NAME_CHARS + 1]
    record = await api.run(store.get_operator, name) if name else None
    stored = record.password_hash if record is not None else None
    ok = await trio.to_thread.run_sync(operators.password_matches,
                                       password[:MAX_PASSWORD_CHARS + 1], stored, limiter=hashing)
    ts = int(admin.authority.clock().timestamp())
    if not ok or record is None or len(password) > MAX_PASSWORD_CHARS:
        def failed() -> None:
            limiter.record_failure(key, time.time())
            store.append_audit(actor=ANONYMOUS, tenant=None, action=Action.OPERATOR_SIGNIN_FAILED,
                               ts=ts, target=_name_for_audit(name), details={"source": source})
        await api.run(failed)
        raise BadCredentials(FAILED_MESSAGE)
    session_id = new_session_id()
    session = ConsoleSession(session_hash(session_id), record.name, ts, ts,
                             max(1, round(settings.session_idle_timeout_s)),
                             ts + max(1, round(settings.session_lifetime_s)), source)
    principal = Principal.of(record, SessionCookie.kind)
    try:
        await api.run(lambda: store.create_console_session(session, actor=principal.actor))
    except UnknownOperator:  # removed since its password was checked
        raise BadCredentials(FAILED_MESSAGE) from None
    return SignedIn(session_id, session, principal)


async def sign_out(api: ApiContext, headers: Mapping[str, str], cookies: Mapping[str, str],
                   source: str) -> Principal:
    """End the request's session, through the one authorisation path (``Access.SESSION``:
    every role, with the CSRF token). Audited ``operator.signed_out``."""
    principal = await api.run(api.authenticator.authenticate, headers, cookies, source,
                              time.time())
    authorize(principal, Access.SESSION, None, api.authority.config.tenants)
    ts = int(api.authority.clock().timestamp())
    id_hash = session_hash(cookies.get(COOKIE, ""))
    await api.run(lambda: api.authority.store.end_console_session(
        id_hash, actor=principal.actor, ts=ts))
    return principal
