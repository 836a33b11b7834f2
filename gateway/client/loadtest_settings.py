"""What ``switch loadtest`` is told: the fleet's size, the server's addresses and how the
simulated agents behave (``LoadSettings``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class LoadSettings:
    agents: int
    gateway: tuple[str, int]
    enroll: tuple[str, int]
    server_name: str
    key_secret: str = attrs.field(repr=False)
    processes: int = attrs.field(factory=lambda: os.cpu_count() or 1)
    ca_file: Path | None = None
    pin_sha256: str | None = None
    path: str = "/"
    #: New sessions per second, all workers together; 0 opens them as fast as possible.
    connect_rate: float = 200.0
    #: EST requests in flight, all workers together.
    enroll_concurrency: int = 16
    hold_s: float = 10.0
    message_interval_s: float = 5.0
    message_size: int = 64
    timeout_s: float = 30.0
    key_type: str = "ec-p256"
    #: "1.2" or "1.3" to pin the TLS version of the sessions; None lets them negotiate.
    tls_version: str | None = None
    #: Roots of the server's process tree, for memory and CPU figures; empty: not measured.
    server_pids: tuple[int, ...] = ()
    phase_timeout_s: float = 900.0
    #: End the hold early once the server has closed every session (for revocation benches).
    until_all_closed: bool = False
    #: Open a session the server ended (or that failed to open) again, with the reference
    #: agent's jittered back-off, until the hold ends (for reconnection storms); off: a closed
    #: session stays closed and is only counted.
    reconnect: bool = False
    #: Gateways beside ``gateway`` (several hosts with no load balancer in front): each worker
    #: spreads its agents over them all, round robin (``gateway_for``).
    more_gateways: tuple[tuple[str, int], ...] = ()

    def gateway_for(self, index: int) -> tuple[str, int]:
        """The gateway a worker's simulated agent number ``index`` connects to."""
        every = (self.gateway, *self.more_gateways)
        return every[index % len(every)]

    def public(self) -> dict[str, Any]:
        """The settings for the report (never the provisioning key)."""
        out = attrs.asdict(self, filter=lambda a, _: a.name != "key_secret")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}
