"""How big the fleet bench's parts are (``scripts/benchlib/fleet.py``): the processes for a
fleet of relayed sessions, the loopback addresses its connections leave from, the host's ceiling
of connections per source address, and the deployment's config for it.

Sizing (docs/performance.md, section (f)): a relayed session holds two descriptors in Switch
(agent, upstream) and one in the load generator and in the echo upstream, and a process may open
20,000; so Switch gets one worker per ``SESSIONS_PER_WORKER`` sessions (9,000: under the ~9,900 a
process can hold, with room for the kernel's uneven spread over the workers sharing the socket),
the load generator one process per ``AGENTS_PER_GENERATOR`` and the echo upstream one
``switch echo --reuse-port`` per ``SESSIONS_PER_ECHO``.

Source addresses: one opens at most the ephemeral port range's connections to one address and
port, so the agents, Switch's upstream connections and nginx's spread over 127.0.0.2, 127.0.0.3,
... (``source_addresses``); a fleet still over the range per address is refused (``check_ports``).
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs

from scripts.benchlib import env

FLEET = 50_000
QUICK_FLEET = 1_500
REVOKED = 10_000
SESSIONS_PER_WORKER = 9_000
AGENTS_PER_GENERATOR = 9_000
SESSIONS_PER_ECHO = 15_000
#: The ephemeral port range, and the ports left for other connections (TIME_WAIT, the bench's).
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORT_MARGIN = 1_000
#: Agents per loopback source address (and upstream connections per source address of Switch and
#: nginx): well inside the 28,232 ports of the default range.
AGENTS_PER_SOURCE = 20_000


@attrs.frozen
class Sizing:
    fleet: int
    revoked: int
    workers: int
    generators: int
    echoes: int
    #: The loopback addresses the fleet's connections leave from (``source_addresses``).
    sources: tuple[str, ...] = ()


def sizing(fleet: int, cores: int) -> Sizing:
    """Processes for ``fleet`` sessions (see the module docstring); a fifth of the fleet (at most
    ``REVOKED``) is the group whose key (h) revokes."""
    return Sizing(fleet, min(REVOKED, fleet // 5),
                  max(cores, math.ceil(fleet / SESSIONS_PER_WORKER)),
                  max(cores, math.ceil(fleet / AGENTS_PER_GENERATOR)),
                  max(2, math.ceil(fleet / SESSIONS_PER_ECHO)), source_addresses(fleet))


def source_addresses(fleet: int) -> tuple[str, ...]:
    """The loopback addresses the fleet's connections leave from: one per ``AGENTS_PER_SOURCE``
    agents, at least two (every run spreads), from 127.0.0.2."""
    count = min(253, max(2, math.ceil(fleet / AGENTS_PER_SOURCE)))
    return tuple(f"127.0.0.{2 + i}" for i in range(count))


def check_ports(fleet: int, sources: int, path: Path = PORT_RANGE) -> None:
    """Refuse a fleet with more connections per source address than the ephemeral port range
    holds less ``PORT_MARGIN`` (past it every connect fails with ``EADDRNOTAVAIL``)."""
    ports = ports_per_destination(path)
    per_source = math.ceil(fleet / sources)
    if ports is not None and per_source > ports - PORT_MARGIN:
        raise RuntimeError(
            f"--fleet {fleet:,} puts {per_source:,} connections on each of {sources} source "
            f"addresses, over the {ports:,} this host opens from one address to one address "
            f"and port (ip_local_port_range), less {PORT_MARGIN:,}")


def fleet_config(deploy: env.Deployment, sources: tuple[str, ...] = ()) -> Path:
    """The deployment's config for a fleet: pings every 30 s (the default), the default drain
    deadline (10 s: a stop no longer waits for it, it only bounds the closing handshakes of
    thousands of sessions on a loaded machine; 1 s would cut them and the agents would see 1006),
    ``max_connections`` per worker at what one process can hold, and the upstream connections
    spread over ``sources``."""
    text = deploy.config.read_text()
    text = text.replace('ping_interval = "5s"', 'ping_interval = "30s"')
    text = text.replace("max_connections = 5000", "max_connections = 9900", 1)
    if sources:
        if "[gateway]\n" not in text:  # a fleet without the spread would stall at the port range
            raise RuntimeError(f"{deploy.config} has no [gateway] table to add the sources to")
        listed = ", ".join(f'"{a}"' for a in sources)
        text = text.replace("[gateway]\n", f"[gateway]\nupstream_source_addresses = [{listed}]\n", 1)
    path = deploy.directory / "fleet.toml"
    path.write_text(text)
    return path


def ports_per_destination(path: Path = PORT_RANGE) -> int | None:
    """How many connections the kernel lets this host open to one address and port (its
    ephemeral port range), or None where it does not say."""
    try:
        low, high = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return None
    return high - low + 1
