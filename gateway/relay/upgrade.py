"""The pure rules of an agent's WebSocket upgrade: its checks, the headers that go upstream, the
upstream URL, the ``Host`` check, and the replies that accept or refuse it (no I/O, no trio).

- The request must be a WebSocket upgrade (RFC 6455 4.2.1): ``GET``, ``Upgrade: websocket``,
  ``Connection: Upgrade``, version 13 and a 16-byte key; else ``405``/``426``/``400``.
- The ``Host`` of the upgrade must name the tenant SNI chose, else ``421 Misdirected Request``.
- The upgrade is relayed to the tenant's ``upstream`` with the agent's path appended to the
  upstream's path (dot segments refused: ``400 bad_path``) and both queries kept, the agent's
  own headers (less hop-by-hop, WebSocket handshake and any ``X-Switch-*`` it sent, however
  spelled) and the verified identity in ``X-Switch-*`` headers.
- A refusal is a short ``text/plain`` reply with the standard reason phrase and the stable
  reason code, and the connection closes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import urllib.parse
from collections.abc import Sequence
from http import HTTPStatus

import attrs
import h11
from wsproto.utilities import generate_accept_token

from config.model import SwitchConfig, Tenant
from gateway.peer import Decision

IDENTITY_PREFIX = b"x-switch-"
_NOT_FORWARDED = {b"host", b"upgrade", b"connection", b"sec-websocket-key",
                  b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol",
                  b"sec-websocket-accept", b"content-length", b"transfer-encoding", b"keep-alive",
                  b"te", b"trailer", b"proxy-authorization", b"proxy-connection"}
#: Bytes asked of a stream per read: one TLS record's plaintext.
RECV_BYTES = 16 * 1024
#: Largest opening handshake (request line and headers) accepted from an agent or an upstream.
MAX_HANDSHAKE_BYTES = 16 * 1024


def identity_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """The verified identity as the upstream reads it: ``X-Switch-*`` headers, empty ones left
    out."""
    values = {
        b"X-Switch-Tenant": decision.tenant, b"X-Switch-Identity": decision.identity,
        b"X-Switch-Trust": decision.trust, b"X-Switch-Key-Id": decision.key_id,
        b"X-Switch-Cert-Serial": decision.serial, b"X-Switch-Cert-Sha256": decision.sha256,
    }
    return [(k, v.encode("utf-8", "replace")) for k, v in values.items() if v]


def forwarded_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The agent's headers that go upstream: never hop-by-hop, handshake or X-Switch-* ones.

    Names are compared lower-cased with ``_`` read as ``-``: many servers (CGI/WSGI-style
    frameworks) map both ``X-Switch-Identity`` and ``x_switch_identity`` to the same variable, so
    either spelling could pass for Switch's own header."""
    out = []
    for name, value in headers:
        normal = name.lower().replace(b"_", b"-")
        if normal in _NOT_FORWARDED or normal.startswith(IDENTITY_PREFIX):
            continue
        out.append((name, value))
    return out


#: Separators an upstream may split a decoded path on.
_SEGMENT_SEPARATORS = re.compile(r"[/\\]")


def upstream_url(base: str, target: str) -> str:
    """The tenant's upstream URL with the agent's request target joined on: the agent's path
    appended to the upstream's path, the upstream's own query first and the agent's after it.

    Raises ``UpgradeRefused`` (400, ``bad_path``) for a target that is not a path (origin-form),
    or that holds a dot segment — ``.`` or ``..``, also percent-encoded (once or more) or next to
    an encoded slash or a backslash — which would climb out of the upstream's base path wherever
    the path is normalised."""
    path, _, query = target.partition("?")
    if not path.startswith("/") or "#" in target:
        raise UpgradeRefused(400, "bad_path")
    decoded, previous = path, ""
    for _ in range(4):  # undo nested percent-encoding (%252e -> %2e -> .), within reason
        if decoded == previous:
            break
        previous, decoded = decoded, urllib.parse.unquote(decoded)
    if any(segment in (".", "..") for segment in _SEGMENT_SEPARATORS.split(decoded)):
        raise UpgradeRefused(400, "bad_path")
    parts = urllib.parse.urlsplit(base)
    joined_query = "&".join(q for q in (parts.query, query) if q)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path.rstrip("/") + path, joined_query, ""))


def host_matches(host: bytes | None, tenant: Tenant, sni: str | None, config: SwitchConfig
                 ) -> bool:
    """Whether the upgrade's ``Host`` names ``tenant``, the tenant SNI chose (looked up as SNI
    names are: ``SwitchConfig.tenant_for_name``, a port allowed). No ``Host``: no."""
    if host is None:
        return False
    named = config.tenant_for_name(host, port_allowed=True)
    if named is not None and named.name == tenant.name:
        return True
    # An agent that sent no SNI was given the default tenant; any Host is its business.
    return sni is None and config.default_tenant == tenant.name


@attrs.frozen
class Upgrade:
    """The agent's WebSocket upgrade request, checked."""

    target: str
    host: bytes | None
    headers: list[tuple[bytes, bytes]]
    subprotocols: list[str]
    key: bytes


class UpgradeRefused(Exception):
    """The upgrade is refused with HTTP ``status`` (0: no answer, the agent is gone or too slow)
    and a stable ``reason``; ``detail`` is for the log only."""

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.detail = detail


def parse_upgrade(request: h11.Request) -> Upgrade:
    """Check an HTTP request is a WebSocket upgrade (RFC 6455 4.2.1); raise ``UpgradeRefused``."""
    headers = [(bytes(n).lower(), bytes(v)) for n, v in request.headers]
    single: dict[bytes, bytes] = {}
    protocols: list[str] = []
    connection_tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            protocols.extend(p.strip().decode("ascii", "replace") for p in value.split(b",") if p.strip())
        elif name == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
        else:
            single.setdefault(name, value)
    if request.method != b"GET":
        raise UpgradeRefused(405, "not_an_upgrade")
    if single.get(b"upgrade", b"").lower() != b"websocket" or b"upgrade" not in connection_tokens:
        raise UpgradeRefused(426, "not_an_upgrade")
    if single.get(b"sec-websocket-version") != b"13":
        raise UpgradeRefused(426, "unsupported_websocket_version")
    key = single.get(b"sec-websocket-key", b"")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise UpgradeRefused(400, "bad_websocket_key")
    return Upgrade(target=request.target.decode("ascii", "replace"), host=single.get(b"host"),
                   headers=[(bytes(n), bytes(v)) for n, v in request.headers],
                   subprotocols=protocols, key=key)


def new_request_reader() -> h11.Connection:
    """An HTTP/1.1 server connection for one upgrade request, its head bounded."""
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HANDSHAKE_BYTES)


@functools.lru_cache(maxsize=256)
def refusal_response(status: int, reason: str) -> bytes:
    """The whole HTTP/1.1 reply refusing an upgrade: the standard reason phrase, and the stable
    reason code in the body (a few dozen such replies exist; each is made once)."""
    body = f"{status} {reason}\n".encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def accept_response(http: h11.Connection, upgrade: Upgrade, subprotocol: str | None
                    ) -> tuple[bytes, bytes]:
    """The ``101`` accepting ``upgrade`` (the accept token for its key, the subprotocol the
    upstream chose), and what the agent sent right after its request (frames already)."""
    headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-accept", generate_accept_token(upgrade.key))]
    if subprotocol:
        headers.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
    data = http.send(h11.InformationalResponse(status_code=101, headers=headers,
                                               reason=b"Switching Protocols")) or b""
    trailing, _ = http.trailing_data
    return data, bytes(trailing)
