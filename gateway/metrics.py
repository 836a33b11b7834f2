"""Prometheus metrics of one Switch process, on their own registry (served by the admin port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("switch_sessions", "Live agent sessions", ["tenant"], registry=r)
        self.handshakes = Counter("switch_handshakes", "Gateway TLS handshakes by result",
                                  ["tenant", "result"], registry=r)
        self.refusals = Counter("switch_refusals", "Gateway refusals by reason",
                                ["tenant", "reason"], registry=r)
        self.evictions = Counter("switch_evictions", "Live sessions closed because trust changed",
                                 ["tenant", "reason"], registry=r)
        self.relay_bytes = Counter("switch_relay_bytes", "Message payload bytes relayed",
                                   ["tenant", "direction"], registry=r)
        self.relay_messages = Counter("switch_relay_messages", "Messages relayed",
                                      ["tenant", "direction"], registry=r)
        self.session_ends = Counter("switch_session_ends",
                                    "Relayed sessions ended, by close reason (peer close codes "
                                    "folded into agent_closed / upstream_closed)",
                                    ["tenant", "reason"], registry=r)
        self.enrollments = Counter("switch_enrollments", "EST requests by result",
                                   ["tenant", "result"], registry=r)
        self.enroll_refusals = Counter(
            "switch_enroll_refusals",
            "Enroll port connections refused before any request (handshake, limits), by reason",
            ["reason"], registry=r)
        self.trust_generation = Gauge("switch_trust_generation",
                                      "Store change generation the gateway enforces", registry=r)
        self.config_generation = Gauge("switch_config_generation",
                                       "Configuration generation in force", registry=r)
        self.config_reloads = Counter("switch_config_reloads", "Config reloads by result",
                                      ["result"], registry=r)
        self.config_last_reload_success = Gauge(
            "switch_config_last_reload_success",
            "1 if the last config load (at start or by reload) succeeded, 0 if it was refused",
            registry=r)
        self.config_last_reload_timestamp = Gauge(
            "switch_config_last_reload_timestamp_seconds",
            "Unix time of the last config load (at start or by reload), whatever its result",
            registry=r)

        #: Children of the per-connection counters, by labels: ``labels()`` costs a lock and a
        #: validation per call (about 2 us), which every handshake would pay. The label values
        #: are tenant names and reason codes: a bounded set.
        self._children: dict[tuple[str, str, str], Counter] = {}

    def _child(self, metric: Counter, first: str, second: str) -> Counter:
        """``metric``'s child for its label values (``second`` empty: a one-label metric)."""
        key = (metric._name, first, second)
        child = self._children.get(key)
        if child is None:
            values = (first, second) if second else (first,)
            child = self._children[key] = metric.labels(*values)
        return child

    def refused(self, tenant: str | None, reason: str) -> None:
        self._child(self.refusals, tenant or "-", reason).inc()

    def enroll_refused(self, reason: str) -> None:
        self._child(self.enroll_refusals, reason, "").inc()

    def evicted(self, tenant: str, reason: str) -> None:
        self._child(self.evictions, tenant, reason).inc()

    def handshake(self, tenant: str | None, result: str) -> None:
        self._child(self.handshakes, tenant or "-", result).inc()
