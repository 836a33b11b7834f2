"""Who is asking, and may they: the API's one authentication step and its one authorisation
check. Every route goes through both, in ``gateway.api.app.guard``; nothing else decides.

Authentication. A request proves its operator with one credential; each kind is a
``Credential``: ``BearerToken`` (``Authorization: Bearer swo_...``) and the console's session
cookie (``gateway.api.session.SessionCookie``), identified the same way.
``Authenticator.authenticate`` tries the kinds in order and returns a ``Principal``: the operator
as the store holds it *now*. There is no cache: each request reads the operator by its token id
or its session (one indexed row), so a removed operator, a replaced token or an ended session is
refused on its very next request, on every process and host. The credential also says whether
the request proves it is no cross-site forgery (``Principal.csrf_ok``): a bearer token always
does (a page of another site cannot set ``Authorization``); a session cookie, which the browser
sends by itself, only with its CSRF token and same-origin headers.
Failed attempts (a credential that does not parse or names no current operator) are counted per
source address in the store (``enroll.ratelimit.SharedFailureLimiter``, the EST port's rule:
five a minute, shared by every process and host) and refused with 429 past that; the reason of
each failure is counted in ``/metrics``. A credential is never logged.

Authorisation (``authorize``), a pure function of the principal, the route's declared access
(``Access.READ`` or ``Access.CHANGE``) and the tenant the route names:

1. a tenant that is not in the configuration, or not one of the operator's, is ``unknown_tenant``
   (404: an operator cannot tell another tenant from no tenant);
2. a change (``CHANGE``, or ``SESSION``: signing out) whose request does not prove it is no
   cross-site forgery is ``csrf_failed`` (403);
3. a change by an operator whose role changes nothing (``security-read``) is ``role_forbidden``
   (403), before anything is read or written.

The audit log's actor is ``Principal.actor`` (``operator:NAME``), never anything the request
carries.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar, Protocol

import attrs

from enroll.errors import (
    BadCredentials,
    CredentialsRequired,
    MalformedCredentials,
    RateLimited,
    UnknownTenant,
)
from enroll.operator_admin import OperatorAdmin
from enroll.operators import SECURITY_ADMIN, OperatorRecord
from enroll.ratelimit import Limiter
from gateway.api.errors import CsrfFailed, RoleForbidden

#: A bearer credential longer than this is malformed (an operator token is 64 characters).
MAX_TOKEN_CHARS = 256


class Access(enum.StrEnum):
    """What a route does: reads (every role), changes (``security-admin`` only), or changes
    only the operator's own sign-in (``SESSION``: every role, but a change, so CSRF-checked)."""

    READ = "read"
    SESSION = "session"
    CHANGE = "change"


@attrs.frozen
class Principal:
    """An authenticated operator, as the store held it when the request was authenticated."""

    operator: str
    role: str
    #: None: every tenant.
    tenants: tuple[str, ...] | None
    #: The kind of credential that proved it (``Credential.kind``).
    credential: str
    #: The request cannot be a cross-site forgery (``Credential.proves_intent``); changes need
    #: it. False unless the credential said so (fail closed).
    csrf_ok: bool = False

    @classmethod
    def of(cls, record: OperatorRecord, credential: str, *, csrf_ok: bool = False) -> Principal:
        return cls(record.name, record.role, record.tenants, credential, csrf_ok)

    @property
    def actor(self) -> str:
        """Who the audit log says acted."""
        return f"operator:{self.operator}"

    @property
    def can_change(self) -> bool:
        return self.role == SECURITY_ADMIN

    def may_see(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def visible(self, tenants: Iterable[str]) -> list[str]:
        """Of ``tenants``, the ones this operator may see, sorted."""
        return sorted(t for t in tenants if self.may_see(t))


class Credential(Protocol):
    """One way a request proves its operator. ``carried`` says whether the request holds this
    kind at all (cheap, no store); ``identify`` (run in the store's thread) returns the operator
    it proves, None when it proves none, or raises ``MalformedCredentials`` (both counted
    against the source) or another refusal (not counted: e.g. an expired session);
    ``proves_intent`` says whether the request, with this credential, cannot be a cross-site
    forgery (what a change needs)."""

    kind: ClassVar[str]

    def carried(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool: ...

    def identify(self, headers: Mapping[str, str], cookies: Mapping[str, str],
                 operators: OperatorAdmin) -> OperatorRecord | None: ...

    def proves_intent(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool: ...


class BearerToken:
    """``Authorization: Bearer swo_...``: an operator's API token."""

    kind: ClassVar[str] = "token"

    def carried(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        return "authorization" in headers

    def identify(self, headers: Mapping[str, str], cookies: Mapping[str, str],
                 operators: OperatorAdmin) -> OperatorRecord | None:
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise MalformedCredentials("expected Authorization: Bearer <operator token>")
        return operators.by_token(token)

    def proves_intent(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """Always: a browser never adds ``Authorization`` by itself, and another site's page
        cannot set it (that would need a CORS preflight, which Switch never allows)."""
        return True


@attrs.define(eq=False)
class Authenticator:
    """Authenticates requests with ``credentials`` (tried in order), counting failures per
    source in ``limiter``. Synchronous: call it in the store's thread."""

    credentials: Sequence[Credential]
    operators: OperatorAdmin
    limiter: Limiter

    def authenticate(self, headers: Mapping[str, str], cookies: Mapping[str, str], source: str,
                     now: float) -> Principal:
        """``RateLimited`` for a source over the failure limit (whatever it carries);
        ``CredentialsRequired`` when it carries no credential; ``MalformedCredentials`` and
        ``BadCredentials`` (both counted against the source) otherwise."""
        key = f"api:{source}"
        wait = self.limiter.retry_after(key, now)
        if wait is not None:
            raise RateLimited("too many failed authentications from this address",
                              retry_after=wait)
        for credential in self.credentials:
            if not credential.carried(headers, cookies):
                continue
            try:
                record = credential.identify(headers, cookies, self.operators)
            except MalformedCredentials:
                self.limiter.record_failure(key, now)
                raise
            if record is None:
                self.limiter.record_failure(key, now)
                raise BadCredentials("not the credential of a current operator")
            return Principal.of(record, credential.kind,
                                csrf_ok=credential.proves_intent(headers, cookies))
        raise CredentialsRequired("an operator token (Authorization: Bearer swo_...) or a "
                                  "console session is required")


def authorize(principal: Principal, access: Access, tenant: str | None,
              known_tenants: Iterable[str]) -> None:
    """The one authorisation check (see the module docstring): returns, or raises
    ``UnknownTenant`` (404), ``CsrfFailed`` (403) or ``RoleForbidden`` (403). Fails closed: a
    tenant the configuration does not hold is unknown to everyone."""
    if tenant is not None and (tenant not in set(known_tenants) or not principal.may_see(tenant)):
        raise UnknownTenant(f"no tenant {tenant!r}")
    if access is not Access.READ and not principal.csrf_ok:
        raise CsrfFailed("this change came without the console's CSRF token, or from another "
                         "site: reload the page and try again")
    if access is Access.CHANGE and not principal.can_change:
        raise RoleForbidden(f"operator {principal.operator} has role {principal.role}, which "
                            "changes nothing")
