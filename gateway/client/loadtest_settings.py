"""What ``switch loadtest`` is told: the fleet's size, the server's addresses and how the
simulated agents behave (``LoadSettings``), and the check of the local addresses its sessions
are opened from (``check_source_addresses``)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

#: The group of the agents that enroll with ``LoadSettings.key_secret``.
MAIN_GROUP = "main"


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
    #: Sessions being opened at once, all workers together (each opening when one before it
    #: opened or failed): the connect phase then runs as fast as the server answers without
    #: piling up handshakes that time out. 0: no limit (``connect_rate`` alone paces).
    connect_concurrency: int = 0
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
    #: Provisioning keys beside ``key_secret``, as (group, secret, agents): that many agents of
    #: the fleet enroll with that key instead (spread over the worker processes), and the report
    #: counts how the sessions of each group ended (a revocation that must close one key's
    #: sessions and none of the others'). The rest are group ``main``.
    key_groups: tuple[tuple[str, str, int], ...] = ()
    #: Local IP addresses the sessions are opened from, the agents spread over them round robin
    #: (``source_for``): one source address opens at most the ephemeral port range's connections
    #: to one gateway address and port (28,232 by default on Linux). Empty: the kernel chooses.
    source_addresses: tuple[str, ...] = ()

    def shares(self) -> list[int]:
        """The agents each worker process simulates (as even as can be, none idle)."""
        processes = max(1, min(self.processes, self.agents))
        return [self.agents // processes + (1 if i < self.agents % processes else 0)
                for i in range(processes)]

    def group_of(self, worker: int, index: int) -> tuple[str, str]:
        """(group, provisioning key) of worker ``worker``'s agent number ``index``. Agents are
        numbered across the fleet round robin over the workers, so that each group is spread
        over them all."""
        number = worker + index * len(self.shares())
        for name, secret, agents in self.key_groups:
            if number < agents:
                return name, secret
            number -= agents
        return MAIN_GROUP, self.key_secret

    def gateway_for(self, index: int) -> tuple[str, int]:
        """The gateway a worker's simulated agent number ``index`` connects to."""
        every = (self.gateway, *self.more_gateways)
        return every[index % len(every)]

    def source_for(self, worker: int, index: int) -> str | None:
        """The local address worker ``worker``'s agent number ``index`` connects from (numbered
        across the fleet as in ``group_of``, so that each address gets an even share)."""
        if not self.source_addresses:
            return None
        number = worker + index * len(self.shares())
        return self.source_addresses[number % len(self.source_addresses)]

    def public(self) -> dict[str, Any]:
        """The settings for the report (never a provisioning key)."""
        out = attrs.asdict(self, filter=lambda a, _: a.name not in ("key_secret", "key_groups"))
        out["key_groups"] = [[name, agents] for name, _, agents in self.key_groups]
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def check_source_addresses(addresses: Sequence[str], targets: Sequence[tuple[str, int]]
                           ) -> tuple[str, ...]:
    """The source addresses, each checked: an IP address (written in its usual form), of this
    host (it binds), of the family of every target given as an IP address, listed once. Raises
    ``ValueError`` saying which one is wrong and why."""
    out: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise ValueError(f"source address {text!r} is not an IP address") from None
        for host, _ in targets:
            try:
                target = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                continue  # a name: the connection tries its addresses of the source's family
            if target.version != address.version:
                raise ValueError(f"source address {address} is IPv{address.version}, the "
                                 f"gateway {host} IPv{target.version}")
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((str(address), 0))
            except OSError as exc:
                raise ValueError(f"source address {address} is not an address of this host "
                                 f"({exc.strerror or exc})") from None
        if str(address) in out:
            raise ValueError(f"source address {address} is given twice")
        out.append(str(address))
    return tuple(out)
