"""Telling systemd how the service is doing (``sd_notify``, for a unit with ``Type=notify``).

systemd names a datagram socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace); the service sends it newline-separated ``KEY=VALUE`` lines: ``READY=1`` once it
serves, ``STOPPING=1`` when it begins to stop. Without the variable (not under systemd, or a
unit of another type) nothing is sent. Only the process systemd started sends (its main pid):
the supervisor of ``switch serve --workers N``, or the single serving process; workers are
started without the variable.

The protocol is the one of sd_notify(3): one datagram, no reply, so a send never waits on
systemd; a failure is logged and otherwise ignored (the service works without it).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("switch")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to systemd's notify socket; False when there is
    none or it could not be sent."""
    address = (os.environ if env is None else env).get(NOTIFY_SOCKET_ENV)
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)  # a datagram socket does not block for long; bound it anyway
            sock.connect(target)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", socket=address, message=message,
                    error=exc.strerror or str(exc))
        return False
    return True


def without_notify_socket(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a child process that must not talk to systemd (a worker)."""
    return {k: v for k, v in env.items() if k != NOTIFY_SOCKET_ENV}
