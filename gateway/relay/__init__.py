"""The relay of an admitted agent's WebSocket session to its tenant's upstream, in five rooms.

- ``upgrade``: the pure rules of the agent's upgrade (its checks, the ``Host`` check, the
  headers and URL that go upstream, the replies that accept or refuse it);
- ``upstream``: the dialler (TCP or TLS to the upstream, its opening handshake and its check);
- ``session``: the session's life (``run_session``: register, upgrade, dial, relay, close,
  metrics and the log line);
- ``pump``: the frame pump (one loop per direction, the writes to each side, the closing
  handshake owed to each side);
- ``keepalive``: the process's one sweep over the relaying sessions (pings to silent agents,
  ``ping_timeout`` and ``idle_timeout``).

``gateway.gateway_listener`` calls ``run_session`` once the TLS handshake admitted the agent.
"""

from gateway.relay.pump import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UPSTREAM_FAILED,
)
from gateway.relay.session import metric_reason, run_session
from gateway.relay.upgrade import (
    Upgrade,
    UpgradeRefused,
    forwarded_headers,
    host_matches,
    identity_headers,
    parse_upgrade,
    refusal_response,
    upstream_url,
)
from gateway.relay.upstream import UpstreamTLS, UpstreamUnavailable

__all__ = [
    "CLOSE_GOING_AWAY", "CLOSE_INTERNAL", "CLOSE_NORMAL", "CLOSE_POLICY", "CLOSE_TOO_BIG",
    "CLOSE_UPSTREAM_FAILED", "Upgrade", "UpgradeRefused", "UpstreamTLS", "UpstreamUnavailable",
    "forwarded_headers", "host_matches", "identity_headers", "metric_reason", "parse_upgrade",
    "refusal_response", "run_session", "upstream_url",
]
