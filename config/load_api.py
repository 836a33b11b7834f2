"""Reading ``[api]`` and ``[[webhooks]]`` (the admin API's listener and the event notifications)
into their model values; ``config.load`` hands over each table. The keys, with their defaults::

    [api]                               # the admin API and console: HTTPS, operators' tokens
    listen = "127.0.0.1:9444"
    enabled = true
    request_timeout = "10s"             #  -> request_timeout_s: the handshake, each read
    idle_timeout = "30s"                #  -> idle_timeout_s: between requests on a connection
    max_body_size = "64KiB"             #  -> max_body_bytes
    max_header_size = "16KiB"           #  -> max_header_bytes: request line and headers
    console = true                      # the security admin console at / (docs/console.md)
    session_idle_timeout = "30m"        #  -> session_idle_timeout_s: a console session unused
    session_lifetime = "8h"             #  -> session_lifetime_s: a console session at most

    [[webhooks]]                        # any number; each event POSTed to every subscriber
    url = "https://hooks.example/switch"   # https:// (http:// only to a loopback address)
    secret_file = "secrets/hook.secret" # required: the HMAC-SHA256 key (at least 16 bytes)
    events = ["request.pending", "key.revoked"]   # required, of model.WEBHOOK_EVENTS, or ["*"]
    name = "hooks"                      # optional, unique: logs and metrics (default: webhook-N)
    timeout = "5s"                      #  -> timeout_s: one delivery attempt
    ca_file = "pki/hooks-ca.pem"        # optional, https:// only: the receiver's CA
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from config import tls_material
from config.model import WEBHOOK_EVENTS, ApiSettings, Listener, Webhook

T = TypeVar("T")
#: An HMAC key shorter than this is refused: it would be guessable.
MIN_SECRET_BYTES = 16


class Table(Protocol):
    """What this module asks of ``config.load``'s table reader."""

    data: Mapping[str, Any]

    def error(self, name: str, message: str) -> None: ...

    def string(self, name: str, default: str | None = None, required: bool = False
               ) -> str | None: ...

    def boolean(self, name: str, default: bool) -> bool: ...

    def strings(self, name: str, required: bool = False) -> tuple[str, ...]: ...

    def convert(self, name: str, parse: Callable[[Any], T], default: T) -> T: ...

    def duration(self, name: str, default: float) -> float: ...

    def size(self, name: str, default: int) -> int: ...

    def path(self, name: str, required: bool = False) -> Path | None: ...

    def finish(self) -> None: ...


def read_api(t: Table, listener: Listener) -> ApiSettings:
    """``[api]``, its listener already read (``config.load``'s ``listen`` and ``enabled``)."""
    d = ApiSettings()
    settings = ApiSettings(
        listen=listener,
        request_timeout_s=t.duration("request_timeout", d.request_timeout_s),
        idle_timeout_s=t.duration("idle_timeout", d.idle_timeout_s),
        max_body_bytes=t.size("max_body_size", d.max_body_bytes),
        max_header_bytes=t.size("max_header_size", d.max_header_bytes),
        console=t.boolean("console", d.console),
        session_idle_timeout_s=t.duration("session_idle_timeout", d.session_idle_timeout_s),
        session_lifetime_s=t.duration("session_lifetime", d.session_lifetime_s),
    )
    for key, value in (("request_timeout", settings.request_timeout_s),
                       ("idle_timeout", settings.idle_timeout_s)):
        if value <= 0:
            t.error(key, "must be more than 0")
    for key, value in (("session_idle_timeout", settings.session_idle_timeout_s),
                       ("session_lifetime", settings.session_lifetime_s)):
        if value < 60:
            t.error(key, "must be at least 1m")
    if settings.session_idle_timeout_s > settings.session_lifetime_s:
        t.error("session_idle_timeout", "must not be longer than session_lifetime")
    if settings.max_header_bytes < 1024:
        t.error("max_header_size", "must be at least 1KiB")
    t.finish()
    return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_webhook(t: Table, index: int) -> Webhook | None:
    """One ``[[webhooks]]`` entry, or None when it is too broken to use (the problems are
    recorded)."""
    url = t.string("url", required=True)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            t.error("url", f"must be an https:// URL with a host, not {url!r}")
            url = None
        elif parts.scheme == "http" and not _is_loopback(parts.hostname):
            t.error("url", "http:// is for a receiver on this host only (127.0.0.1, ::1, "
                    "localhost): use https:// elsewhere, events name tenants and subjects")
            url = None
    secret_file = t.path("secret_file", required=True)
    if secret_file is not None:
        try:
            if len(tls_material.read_password_file(secret_file)) < MIN_SECRET_BYTES:
                t.error("secret_file", f"{secret_file} must hold at least {MIN_SECRET_BYTES} "
                        "bytes (a random secret: openssl rand -hex 32)")
        except ValueError as exc:
            t.error("secret_file", str(exc))
    events = t.strings("events", required=True)
    if "events" in t.data and not events:
        t.error("events", "needs at least one event (or [\"*\"] for all)")
    if events == ("*",):
        events = WEBHOOK_EVENTS
    for i, event in enumerate(events):
        if event not in WEBHOOK_EVENTS:
            t.error(f"events[{i}]", f"unknown event {event!r} (events: "
                    f"{', '.join(WEBHOOK_EVENTS)}, or \"*\" alone)")
    name = t.string("name", f"webhook-{index}") or f"webhook-{index}"
    timeout = t.duration("timeout", 5.0)
    if timeout <= 0:
        t.error("timeout", "must be more than 0")
    ca_file = t.path("ca_file")
    if ca_file is not None:
        try:
            tls_material.load_ca_certificates(ca_file)
        except ValueError as exc:
            t.error("ca_file", str(exc))
        if url is not None and urlsplit(url).scheme != "https":
            t.error("ca_file", "is for an https:// receiver")
    t.finish()
    if url is None or secret_file is None:
        return None
    return Webhook(name, url, secret_file, tuple(dict.fromkeys(events)), timeout, ca_file)


def check_webhook_names(hooks: list[Webhook | None], error: Callable[[int, str], None]) -> None:
    """Names are what logs and metrics show: each once (``hooks`` as listed, None for an entry
    that did not read)."""
    seen: dict[str, int] = {}
    for i, hook in enumerate(hooks):
        if hook is None:
            continue
        if hook.name in seen:
            error(i, f"name {hook.name!r} is also webhooks[{seen[hook.name]}]'s")
        seen.setdefault(hook.name, i)
