"""What a reload applies, and what only a restart does.

A running Switch reads most of its configuration again on every reload (tenants, CAs, CRLs, the
server certificate, profiles, the gateway's per-connection timeouts and limits) and uses the new
values for every new connection. A few settings are read once, when the process starts: the
listening sockets are open already, the store is open already, and the enroll listener and the
shutdown deadline (in the supervisor too, with ``--workers``) were set up with their values. A
reload that changes one of those keeps the old value in force and reports the key as needing a
restart. ``RESTART_ONLY`` is that list, in the order ``restart_needed`` reports it.
"""

from __future__ import annotations

from collections.abc import Callable

from config.model import SwitchConfig

#: (config key, how to read it): settings a running process only picks up when restarted.
RESTART_ONLY: tuple[tuple[str, Callable[[SwitchConfig], object]], ...] = (
    ("state_dir", lambda c: c.state_dir),
    ("store", lambda c: (c.store.url, c.store.password_file, c.store.issuer_key_passphrase_file)),
    ("gateway.listen", lambda c: (c.gateway.listen.host, c.gateway.listen.port)),
    ("gateway.enabled", lambda c: c.gateway.listen.enabled),
    ("gateway.drain_timeout", lambda c: c.gateway.drain_timeout_s),
    ("enroll.listen", lambda c: (c.enroll.listen.host, c.enroll.listen.port)),
    ("enroll.enabled", lambda c: c.enroll.listen.enabled),
    ("enroll.request_timeout", lambda c: c.enroll.request_timeout_s),
    ("enroll.idle_timeout", lambda c: c.enroll.idle_timeout_s),
    ("enroll.max_body_size", lambda c: c.enroll.max_body_bytes),
    ("enroll.max_connections", lambda c: c.enroll.max_connections),
    ("enroll.max_handshakes_per_source", lambda c: c.enroll.max_handshakes_per_source),
    ("enroll.first_byte_timeout", lambda c: c.enroll.first_byte_timeout_s),
    ("admin.listen", lambda c: (c.admin.listen.host, c.admin.listen.port)),
    ("admin.enabled", lambda c: c.admin.listen.enabled),
    ("api.listen", lambda c: (c.api.listen.host, c.api.listen.port)),
    ("api.enabled", lambda c: c.api.listen.enabled),
    ("api", lambda c: (c.api.request_timeout_s, c.api.idle_timeout_s, c.api.max_body_bytes,
                       c.api.max_header_bytes)),
    ("webhooks", lambda c: c.webhooks),
)


def restart_needed(running: SwitchConfig, loaded: SwitchConfig) -> tuple[str, ...]:
    """The keys of ``RESTART_ONLY`` whose value differs between the configuration a process
    started with (``running``) and the one a reload just loaded."""
    return tuple(key for key, read in RESTART_ONLY if read(running) != read(loaded))
