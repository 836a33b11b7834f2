"""Reading the server-wide tables of the configuration: ``[gateway]``, ``[enroll]``, ``[admin]``,
``[api]`` and ``[[webhooks]]`` (through ``config.load_api``), ``[tls]`` and ``[store]``; the keys
and their defaults are listed in ``config.load``."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from config import ciphers, load_api, tls_material
from config.errors import ConfigError
from config.model import (
    AdminSettings,
    ApiSettings,
    EnrollSettings,
    GatewaySettings,
    ServerTLS,
    StoreSettings,
    Webhook,
)
from config.tables import MISSING, Table, listener, positive, tname


def read_gateway(root: Table) -> GatewaySettings:
    t = root.table("gateway")
    d = GatewaySettings()
    if t is None:
        return d
    settings = GatewaySettings(
        listen=listener(t, d.listen),
        handshake_timeout_s=t.duration("handshake_timeout", d.handshake_timeout_s),
        request_timeout_s=t.duration("request_timeout", d.request_timeout_s),
        idle_timeout_s=t.duration("idle_timeout", d.idle_timeout_s),
        upstream_connect_timeout_s=t.duration("upstream_connect_timeout", d.upstream_connect_timeout_s),
        close_timeout_s=t.duration("close_timeout", d.close_timeout_s),
        drain_timeout_s=t.duration("drain_timeout", d.drain_timeout_s),
        ping_interval_s=t.duration("ping_interval", d.ping_interval_s),
        write_timeout_s=t.duration("write_timeout", d.write_timeout_s),
        max_connections=t.integer("max_connections", d.max_connections, minimum=1),
        max_message_bytes=t.size("max_message_size", d.max_message_bytes),
        max_handshakes_per_source=t.integer("max_handshakes_per_source",
                                            d.max_handshakes_per_source, minimum=1),
        first_byte_timeout_s=positive(t, "first_byte_timeout", d.first_byte_timeout_s),
        upstream_source_addresses=_source_addresses(t, "upstream_source_addresses"),
    )
    t.finish()
    return settings


def _source_addresses(t: Table, name: str) -> tuple[str, ...]:
    """Local IP addresses to connect from: each an address of this host (it binds), all of one
    family, none twice; written in their usual form."""
    out: list[str] = []
    versions: set[int] = set()
    value = t.raw(name)
    if value is MISSING:
        return ()
    if not isinstance(value, list):
        t.error(name, f"expected a list of IP addresses, got {tname(value)}")
        return ()
    for i, text in enumerate(value):
        key = f"{name}[{i}]"
        if not isinstance(text, str):
            t.error(key, f"expected a string, got {tname(text)}")
            continue
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            t.error(key, f"{text!r} is not an IP address")
            continue
        if str(address) in out:
            t.error(key, f"{address} is listed twice")
            continue
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((str(address), 0))
            except OSError as exc:
                t.error(key, f"{address} is not an address of this host ({exc.strerror or exc})")
                continue
        versions.add(address.version)
        out.append(str(address))
    if len(versions) > 1:
        t.error(name, "mixes IPv4 and IPv6 addresses: list those of the upstreams' family")
    return tuple(out)


def read_enroll(root: Table) -> EnrollSettings:
    t = root.table("enroll")
    d = EnrollSettings()
    if t is None:
        return d
    settings = EnrollSettings(
        listen=listener(t, d.listen),
        request_timeout_s=t.duration("request_timeout", d.request_timeout_s),
        idle_timeout_s=t.duration("idle_timeout", d.idle_timeout_s),
        max_body_bytes=t.size("max_body_size", d.max_body_bytes),
        max_connections=t.integer("max_connections", d.max_connections, minimum=1),
        max_handshakes_per_source=t.integer("max_handshakes_per_source",
                                            d.max_handshakes_per_source, minimum=1),
        first_byte_timeout_s=positive(t, "first_byte_timeout", d.first_byte_timeout_s),
    )
    t.finish()
    return settings


def read_admin(root: Table) -> AdminSettings:
    t = root.table("admin")
    if t is None:
        return AdminSettings()
    settings = AdminSettings(listen=listener(t, AdminSettings().listen))
    t.finish()
    return settings


def read_api(root: Table) -> ApiSettings:
    t = root.table("api")
    if t is None:
        return ApiSettings()
    return load_api.read_api(t, listener(t, ApiSettings().listen))


def read_webhooks(root: Table) -> tuple[Webhook, ...]:
    value = root.raw("webhooks")
    if value is MISSING:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        root.error("webhooks", "expected [[webhooks]] tables")
        return ()
    hooks = [load_api.read_webhook(Table(v, root.file, f"webhooks[{i}]", root.problems,
                                          root.source), i) for i, v in enumerate(value)]
    load_api.check_webhook_names(hooks, lambda i, m: root.error(f"webhooks[{i}].name", m))
    return tuple(h for h in hooks if h is not None)


def read_tls(root: Table) -> ServerTLS:
    """Exactly one of (cert_file + key_file) or (keystore + keystore_password_file), and the
    files must open, parse and match."""
    t = root.table("tls", required=True)
    if t is None:
        return ServerTLS()
    before = len(t.problems)
    files = {name: None if (file := t.path(name)) is None else t.located(name, file)
             for name in ("cert_file", "key_file", "keystore", "keystore_password_file")}
    tls = ServerTLS(files["cert_file"], files["key_file"], files["keystore"],
                    files["keystore_password_file"])
    if len(t.problems) == before:  # the keys are well typed: check the form and the files
        try:
            tls_material.load_server_credentials(tls, config_file=t.file)
        except ConfigError as exc:
            t.problems.extend(exc.problems)
    tls = attrs.evolve(tls, ciphers=t.convert("ciphers", _cipher_string, None))
    t.finish()
    return tls


def _cipher_string(value: object) -> str:
    """``[tls] ciphers``: an OpenSSL cipher string that selects at least one TLS 1.2 suite."""
    if not isinstance(value, str):
        raise ValueError(f"expected an OpenSSL cipher string, got {tname(value)}")
    ciphers.expand(value)
    return value


def _store_file(t: Table, name: str, required: bool = False) -> Path | None:
    """A secret file of ``[store]``: it must hold something (one trailing newline ignored).
    Like ``state_dir``, read where it is, never from a snapshot: the store is opened once, when
    a process starts (a worker too), and ``[store]`` takes effect only on a restart."""
    path = t.path(name, required=required)
    if path is None:
        return None
    try:
        if not tls_material.read_password_file(path):
            t.error(name, f"{path} is empty")
    except ValueError as exc:
        t.error(name, str(exc))
    return path


def read_store(root: Table) -> StoreSettings:
    """``[store]``: absent, SQLite in ``state_dir``; with ``url``, PostgreSQL."""
    t = root.table("store")
    if t is None:
        return StoreSettings()
    url = t.string("url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            t.error("url", f"must be a postgresql:// URL, not {url!r} (leave [store] out for "
                    "SQLite in state_dir)")
        elif parts.password is not None or "password=" in parts.query:
            t.error("url", "must not hold a password (it would show wherever the URL does): put "
                    "it in [store] password_file")
            url = None
    password_file = _store_file(t, "password_file")
    passphrase_file = _store_file(t, "issuer_key_passphrase_file", required=url is not None)
    if url is None and password_file is not None:
        t.error("password_file", "is for a PostgreSQL store: set [store] url too")
    t.finish()
    return StoreSettings(url, password_file, passphrase_file)
