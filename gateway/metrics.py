"""Prometheus metrics of a Switch, on their own registry (served by the admin port).

Theory of operation: one serving process (``switch serve``) keeps its metrics in memory and
``exposition`` writes them out. With ``--workers N`` every worker counts what it serves and worker
0 alone serves ``/metrics``: the workers run prometheus-client's multiprocess mode (the supervisor
sets ``PROMETHEUS_MULTIPROC_DIR`` to ``STATE_DIR/metrics``, emptied when it starts, before the
workers import prometheus-client), each writing its values to files there, and ``exposition``
reads every worker's files. Counters are summed, those of workers that died included (a count
never goes back). Each gauge says how its workers' values combine (``multiprocess_mode``), over
live workers only (the supervisor calls ``mark_process_dead`` when one exits): sessions are
summed; the generations, the last reload's result and the store's health take the lowest value
(what every worker has: a generation every worker enforces, 0 when any one failed); the last
reload's time the latest. None carries a per-worker label: the pid would make a new series at
every restart.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, multiprocess

#: Set for the workers of ``switch serve --workers N`` (by the supervisor): the directory their
#: metrics are written to. prometheus-client reads it when it is first imported.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The metrics directory in the state directory.
METRICS_DIR = "metrics"


def prepare_multiprocess_dir(state_dir: Path) -> Path:
    """``STATE_DIR/metrics``, made empty (the files of an earlier run would be counted): for the
    supervisor, before it starts any worker."""
    path = state_dir / METRICS_DIR
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    return path


def worker_exited(pid: int, directory: Path) -> None:
    """Forget the gauges of a worker that exited (its counters stay in the sums)."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("switch_sessions", "Live agent sessions", ["tenant"], registry=r,
                              multiprocess_mode="livesum")
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
                                      "Store change generation the gateway enforces (the lowest "
                                      "of the workers')", registry=r, multiprocess_mode="livemin")
        self.config_generation = Gauge("switch_config_generation",
                                       "Configuration generation in force (the lowest of the "
                                       "workers')", registry=r, multiprocess_mode="livemin")
        self.config_reloads = Counter("switch_config_reloads", "Config reloads by result",
                                      ["result"], registry=r)
        self.config_last_reload_success = Gauge(
            "switch_config_last_reload_success",
            "1 if the last config load (at start or by reload) succeeded, 0 if it was refused "
            "(in any worker)", registry=r, multiprocess_mode="livemin")
        self.config_last_reload_timestamp = Gauge(
            "switch_config_last_reload_timestamp_seconds",
            "Unix time of the last config load (at start or by reload), whatever its result",
            registry=r, multiprocess_mode="livemax")

        #: Children of the per-connection counters, by labels: ``labels()`` costs a lock and a
        #: validation per call (about 2 us), which every handshake would pay. The label values
        #: are tenant names and reason codes: a bounded set.
        self._children: dict[tuple[str, str, str], Counter] = {}

    def exposition(self) -> bytes:
        """The Prometheus text of this process, or of every worker in multiprocess mode."""
        directory = os.environ.get(MULTIPROC_DIR_ENV)
        if not directory:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

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
