"""Sections (f) a fleet of relayed sessions on one host, (g) a reconnection storm and (h) one
revocation covering a key's sessions, in one run of the fleet (enrolling 50,000 agents takes
minutes: they enroll once and the three sections follow each other on the same sessions).

Sizing, source addresses and the ports' ceiling: ``fleet_sizing``.

The run, against Switch: every agent enrolls (10,000 of them, the ``revoked`` group, with a key of
their own), connects at most ``CONNECT_CONCURRENCY`` at a time, and holds with the server's pings
every 30 s (``fleet.toml``: the deployment's config with ``ping_interval = "30s"``). (f) reads
the server's memory per session and its CPU over an idle window that spans two ping rounds.
(g) stops Switch with SIGTERM (every session closed with 1001 at once; ``drain_timeout``, 10 s,
bounds the stop, what has not finished closing by then is cut) and starts it again; the agents
reconnect with the reference agent's back-off (``gateway.client.backoff``); the report gives the time from SIGTERM until 99% and 100% of the
sessions are back, the peak rate at which they came back, refusals and agents that gave up.
(h) revokes the ``revoked`` group's key with ``switch keys revoke`` and counts the sessions the
server closed in each group. The same fleet is then run against nginx (the agents enroll at a
Switch beside it) for (f) and (g); nginx has no revocation to compare with.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from gateway.client import procstat
from gateway.client.backoff import Reconnects
from scripts.benchlib import env
from scripts.benchlib.fleet_sizing import (
    FLEET,
    QUICK_FLEET,
    Sizing,
    check_ports,
    fleet_config,
    sizing,
)
from scripts.benchlib.rows import Options, Row
from scripts.benchlib.rows import ratio as _ratio

#: Sessions being opened at once (all load generator processes together).
CONNECT_CONCURRENCY = 64
#: The idle window of (f): two rounds of the server's pings (every 30 s).
IDLE_S, QUICK_IDLE_S = 65.0, 10.0
#: How long the storm and the revocation may take before the section gives up waiting.
STORM_TIMEOUT_S = 900.0
REVOKE_TIMEOUT_S = 60.0
#: Why an attempt did not open while the server restarted, which is no refusal.
_RESTARTING = frozenset({"ECONNREFUSED", "ECONNRESET", "EPIPE"})


def _metric(deploy: env.Deployment, name: str, **labels: str) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return deploy.metric(name, **labels)
    return None


def _wait_metric(deploy: env.Deployment, name: str, done: Callable[[float], bool],
                 timeout_s: float, **labels: str) -> bool:
    def check() -> bool:
        value = _metric(deploy, name, **labels)
        return value is not None and done(value)

    return _wait(check, timeout_s)


def _wait(check: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every_s)
    return False


def _established(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the server's ends)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split(None, 4)
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


@attrs.define
class Marks:
    """What happened when, during the hold (wall-clock, ``time.time()``)."""

    idle_cpu_s: float = 0.0
    idle_s: float = 0.0
    idle_sessions: int = 0
    term: float = 0.0
    stopped: float = 0.0
    ready: float = 0.0
    back: float = 0.0
    all_back: bool = False
    refusals: float = 0.0
    refusal_reasons: dict[str, float] = attrs.field(factory=dict)
    revoke: float = 0.0
    revoked: float = 0.0
    closed: bool = False
    #: CPU seconds of the load generator's processes and of Switch from the revocation's start
    #: until two seconds after Switch's sessions were down (is the generator the bottleneck?).
    revoke_generator_cpu_s: float = 0.0
    revoke_server_cpu_s: float = 0.0
    revoke_window_s: float = 0.0
    #: When Switch's live sessions (``switch_sessions``, every worker) were down by the key's.
    server_closed: float = 0.0
    #: When every session of the key was evicted (``switch_evictions_total``, every worker): its
    #: relay stopped, nothing more reaches the upstream; the close frames and handshakes follow.
    evicted: float = 0.0
    all_evicted: bool = False


def _refusals(deploy: env.Deployment) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{deploy.admin}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("switch_refusals_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _run(deploy: env.Deployment, opts: Options, size: Sizing, port: int, *,
         server: Callable[[], contextlib.AbstractContextManager[env.Server]],
         revoke_key: str | None, with_switch_metrics: bool) -> tuple[dict[str, Any], Marks]:
    """One fleet against the server ``server()`` starts (on ``port``): enroll, connect, hold;
    during the hold the idle window, the restart and (``revoke_key``) the revocation."""
    from gateway.client.loadtest import HoldContext, LoadSettings, run_loadtest

    marks = Marks()
    idle_s = QUICK_IDLE_S if opts.quick else IDLE_S
    with contextlib.ExitStack() as stack:
        current = [stack.enter_context(server())]

        def during_hold(ctx: HoldContext) -> None:
            sw = current[0]
            cpu0, t0 = sw.cpu(), time.monotonic()
            time.sleep(idle_s)
            marks.idle_cpu_s, marks.idle_s = sw.cpu() - cpu0, time.monotonic() - t0
            marks.idle_sessions = ctx.open_sessions
            # (g) restart: SIGTERM, wait for the process to end, start it again.
            marks.term = time.time()
            os.killpg(sw.proc.pid, signal.SIGTERM)
            sw.proc.wait(timeout=120)
            marks.stopped = time.time()
            stack.close()
            current[0] = stack.enter_context(server())
            marks.ready = time.time()
            if with_switch_metrics:
                marks.all_back = _wait_metric(deploy, "switch_sessions",
                                              lambda n: n >= ctx.open_sessions, STORM_TIMEOUT_S)
                marks.back = time.time()
                marks.refusal_reasons = _refusals(deploy)
                marks.refusals = sum(marks.refusal_reasons.values())
            else:  # nginx: its established connections on the port
                marks.all_back = _wait(lambda: _established(port) >= ctx.open_sessions,
                                       STORM_TIMEOUT_S)
                marks.back = time.time()
            if revoke_key is not None:
                time.sleep(2)  # a quiet moment: every session up, none closing
                generator_cpu0 = procstat.cpu_seconds(ctx.generator_pids) or 0.0
                server_cpu0, window0 = current[0].cpu(), time.monotonic()
                evictions0 = _metric(deploy, "switch_evictions_total", reason="key_revoked") or 0.0
                marks.revoke = time.time()
                deploy.cli("keys", "revoke", "demo", revoke_key, "--reason", "bench",
                           "--confirm", revoke_key)
                marks.revoked = time.time()
                marks.all_evicted = _wait_metric(
                    deploy, "switch_evictions_total", lambda n: n - evictions0 >= size.revoked,
                    REVOKE_TIMEOUT_S, reason="key_revoked")
                marks.evicted = time.time()
                marks.closed = _wait_metric(deploy, "switch_sessions",
                                            lambda n: n <= ctx.open_sessions - size.revoked,
                                            REVOKE_TIMEOUT_S)
                marks.server_closed = time.time()
                time.sleep(2)  # would any other session close? (counted from the report)
                marks.revoke_generator_cpu_s = \
                    (procstat.cpu_seconds(ctx.generator_pids) or 0.0) - generator_cpu0
                marks.revoke_server_cpu_s = current[0].cpu() - server_cpu0
                marks.revoke_window_s = time.monotonic() - window0

        groups: tuple[tuple[str, str, int], ...] = ()
        if revoke_key is not None:
            secret = json.loads(deploy.cli("keys", "generate", "demo", revoke_key,
                                           "--json").stdout)["secret"]
            groups = (("revoked", secret, size.revoked),)
        pids = tuple(s.root_pid for s in current)
        settings = LoadSettings(
            agents=size.fleet, processes=size.generators, gateway=("127.0.0.1", port),
            enroll=("127.0.0.1", deploy.enroll), server_name=env.HOST, key_secret=deploy.secret,
            ca_file=deploy.pki / "dev-root-ca.pem", connect_rate=0,
            connect_concurrency=CONNECT_CONCURRENCY, enroll_concurrency=16, hold_s=1.0,
            message_interval_s=0, timeout_s=60, server_pids=pids, reconnect=True,
            key_groups=groups, phase_timeout_s=1800,
            source_addresses=size.sources)
        report, _ = run_loadtest(settings, during_hold=during_hold)
    return report, marks


def _back_times(report: dict[str, Any], marks: Marks, expected: int) -> dict[str, float | None]:
    """Seconds from SIGTERM until 99% and 100% of ``expected`` sessions were back, and the
    peak number that came back in one second."""
    back = [t for t in report.get("reconnected_at", []) if marks.term <= t <= marks.back + 5]
    out: dict[str, float | None] = {"p99": None, "all": None, "peak": 0.0, "count": len(back)}
    if expected and len(back) >= math.ceil(0.99 * expected):
        out["p99"] = back[math.ceil(0.99 * expected) - 1] - marks.term
    if expected and len(back) >= expected:
        out["all"] = back[expected - 1] - marks.term
    per_second = Counter(int(t) for t in back)
    out["peak"] = float(max(per_second.values())) if per_second else 0.0
    return out


def _spread_figure(agents: int) -> str:
    """How the back-off shared by the reference agent and the load generator spreads a fleet
    dropped at once: the busiest 100 ms of their first retries, against a fixed delay (all in
    one)."""
    rng = random.Random(14)
    first = [Reconnects(rng).after_session(1.0) for _ in range(agents)]
    busiest = max(Counter(int(t * 10) for t in first).values())
    waits = [Reconnects(rng) for _ in range(agents)]
    third = [sum(w.after_failure() for _ in range(3)) for w in waits]
    busiest3 = max(Counter(int(t * 10) for t in third).values())
    return (f"back-off (gateway.client.backoff, the reference agent's and the load generator's): "
            f"of {agents} agents dropped at once, the busiest 100 ms of their first retries holds "
            f"{busiest} ({busiest / agents:.0%}; a fixed delay: 100%), of their third retries "
            f"{busiest3} ({busiest3 / agents:.1%}), spread over {max(third):.1f} s")


def fleet(deploy: env.Deployment, opts: Options) -> list[Row]:
    """Sections (f), (g), (h) for Switch; (f) and (g) for nginx on the same fleet."""
    n = opts.fleet or (QUICK_FLEET if opts.quick else FLEET)
    size = sizing(n, os.cpu_count() or 1)
    # docs/performance.md, "the loopback's ceiling".
    check_ports(n, len(size.sources))
    config = fleet_config(deploy, size.sources)
    rows: list[Row] = []
    with env.echo(deploy, opts.work, size.echoes):
        s, sm = _run(deploy, opts, size, deploy.gateway,
                     server=lambda: env.switch(deploy, size.workers, opts.work, config=config,
                                               tag="-fleet"),
                     revoke_key=f"fleet-revoked-{int(time.time())}", with_switch_metrics=True)
    nginx_port = env.free_port()
    with env.echo(deploy, opts.work, size.echoes), env.switch(deploy, 1, opts.work, tag="-est"):
        ng, nm = _run(deploy, opts, size, nginx_port,
                      server=lambda: _nginx_only(deploy, size.workers, opts.work, nginx_port,
                                                 size.sources),
                      revoke_key=None, with_switch_metrics=False)
    rows += _fleet_rows(size, s, sm, ng, nm)
    rows += _storm_rows(size, s, sm, ng, nm)
    rows += _revoke_rows(size, s, sm)
    return rows


@contextlib.contextmanager
def _nginx_only(deploy: env.Deployment, workers: int, work: Path, port: int,
                sources: tuple[str, ...]) -> Iterator[env.Server]:
    with env.nginx(deploy, workers, work, port=port, source_addresses=sources) as (server, _):
        yield server


def _fleet_rows(size: Sizing, s: dict[str, Any], sm: Marks, ng: dict[str, Any], nm: Marks
                ) -> list[Row]:
    def per(report: dict[str, Any]) -> float:
        return float((report["server"] or {}).get("memory_per_session_kib") or 0.0)

    def idle(m: Marks) -> float:
        return m.idle_cpu_s / m.idle_s if m.idle_s else 0.0

    label = (f"{size.fleet:,} agents, Switch --workers {size.workers}, load generator "
             f"{size.generators} processes, echo upstream {size.echoes} processes")
    failures = {k: v for k, v in s["failures"].items() if not k.startswith("session: ")}
    n_failures = {k: v for k, v in ng["failures"].items() if not k.startswith("session: ")}
    return [
        Row(f"(f) agents enrolled / connected ({label})",
            f"{s['enrolled']:,} / {s['connected']:,}", f"{ng['connected']:,} (nginx)", None,
            f"all {size.fleet:,}, 0 failures",
            s["enrolled"] == s["connected"] == size.fleet and not failures,
            f"failures before the storm: Switch {sum(failures.values())} {failures or ''}, "
            f"nginx {sum(n_failures.values())} {n_failures or ''}; enrolled at "
            f"{s['rates']['enrollments_per_s']}/s"),
        Row("(f) time to connect every agent", f"{s['phases_s']['connect_s']:.0f} s",
            f"{ng['phases_s']['connect_s']:.0f} s (nginx)",
            _ratio(s["phases_s"]["connect_s"], ng["phases_s"]["connect_s"]), "", None,
            f"{CONNECT_CONCURRENCY} sessions opening at once; {s['rates']['handshakes_per_s']}/s "
            f"vs {ng['rates']['handshakes_per_s']}/s with the load generator and the echo "
            "upstream on the same 2 cores"),
        Row("(f) server memory per idle relayed session", f"{per(s):.1f} KiB",
            f"{per(ng):.1f} KiB (nginx)", _ratio(per(s), per(ng)), "≤ 40 KiB", 0 < per(s) <= 40,
            f"resident memory of the server's process tree holding {sm.idle_sessions:,} sessions, "
            "minus before connecting, per session; includes the upstream connection"),
        Row(f"(f) server CPU while {sm.idle_sessions:,} sessions idle (pings every 30 s)",
            f"{idle(sm):.1%} of a core", f"{idle(nm):.1%} of a core (nginx)",
            None, "", None,
            f"over {sm.idle_s:.0f} s; Switch pings each session every 30 s and nginx sends none "
            "(the echo upstream and the agents answer)"),
    ]


def _storm_rows(size: Sizing, s: dict[str, Any], sm: Marks, ng: dict[str, Any], nm: Marks
                ) -> list[Row]:
    sb = _back_times(s, sm, sm.idle_sessions)
    nb = _back_times(ng, nm, nm.idle_sessions)

    def fmt(value: float | None) -> str:
        return "not all" if value is None else f"{value:.1f} s"

    attempts = (s.get("reconnects") or {}).get("failed_attempts") or {}
    # Not a refusal: nothing listening (ECONNREFUSED) or the stopping server's queue reset
    # (ECONNRESET) while it restarted. A refusal: a TLS alert, an HTTP error, a connection
    # the server closed in its handshake ("refused").
    restarting = {k: v for k, v in attempts.items() if k.split(": ", 1)[1] in _RESTARTING}
    refused_attempts = {k: v for k, v in attempts.items() if k not in restarting}
    gave_up = sm.idle_sessions - int(sb["count"] or 0)
    closes = {k: v for k, v in s["sessions_closed"].items() if k.startswith("server:")}
    n_closes = {k: v for k, v in ng["sessions_closed"].items() if k.startswith("server:")}
    return [
        Row("(g) restart (SIGTERM, then start) to 99% of the sessions back",
            fmt(sb["p99"]), f"{fmt(nb['p99'])} (nginx)", _ratio(sb["p99"] or 0, nb["p99"] or 0),
            "", None,
            f"Switch stopped {sm.stopped - sm.term:.1f} s after SIGTERM (1001 to every session at "
            f"once, drain deadline 10 s) and served again {sm.ready - sm.stopped:.1f} s later; nginx stopped "
            f"in {nm.stopped - nm.term:.1f} s, served in {nm.ready - nm.stopped:.1f} s"),
        Row("(g) restart to 100% of the sessions back", fmt(sb["all"]),
            f"{fmt(nb['all'])} (nginx)", _ratio(sb["all"] or 0, nb["all"] or 0), "all back",
            sb["all"] is not None,
            f"{sb['count']:,} of {sm.idle_sessions:,} back (nginx {nb['count']:,} of "
            f"{nm.idle_sessions:,}); server closes: Switch {closes}, nginx {n_closes}; nginx's "
            f"attempts that did not open: "
            f"{(ng.get('reconnects') or {}).get('failed_attempts') or '{}'}"),
        Row("(g) peak reconnections per second", f"{sb['peak']:.0f}/s",
            f"{nb['peak']:.0f}/s (nginx)", None, "", None, _spread_figure(size.fleet)),
        Row("(g) refusals during the storm; agents that gave up",
            f"{sm.refusals:.0f}; {max(gave_up, 0)}", "", None, "0; 0",
            sm.refusals == 0 and not refused_attempts and gave_up <= 0,
            f"Switch's refusals by reason {sm.refusal_reasons or '{}'}; attempts that did not "
            f"open: refused {refused_attempts or '{}'}, while it restarted {restarting}; "
            "agents never give up (the back-off caps at 60 s)"),
    ]


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if math.isfinite(value) else f"not within {REVOKE_TIMEOUT_S:.0f} s"


def _revoke_rows(size: Sizing, s: dict[str, Any], sm: Marks) -> list[Row]:
    groups = s.get("groups") or {}
    revoked = groups.get("revoked", {})
    others = groups.get("main", {})
    closed_revoked = [t for t in revoked.get("closed_by_server_at", []) if t >= sm.revoke]
    closed_others = [t for t in others.get("closed_by_server_at", []) if t >= sm.revoke]
    last = max(closed_revoked) - sm.revoke if closed_revoked else float("inf")
    server = sm.server_closed - sm.revoke if sm.closed else float("inf")
    ok = (len(closed_revoked) == size.revoked and not closed_others and server <= 1.0)
    evicted = sm.evicted - sm.revoke if sm.all_evicted else float("inf")
    return [Row(
        f"(h) `switch keys revoke` to every one of the {size.revoked:,} sessions of that key "
        f"evicted, {size.workers} workers", _seconds(evicted), "—", None, "", None,
        f"Switch's evictions counter (every worker) up by the key's {size.revoked:,}: each "
        "session's relay cancelled, nothing more of it reaches the upstream; its close frames go "
        "out next and the row below waits for its closing handshakes to end"), Row(
        f"(h) `switch keys revoke` to the last of {size.revoked:,} sessions of that key closed, "
        f"{size.workers} workers",
        _seconds(server), "—", None, "≤ 1 s, exactly that key's sessions", ok,
        f"Switch's sessions gauge (every worker) down by the key's {size.revoked:,} (polled "
        f"every 50 ms), from the command's start (the command itself, a new Python process, "
        f"took {sm.revoked - sm.revoke:.2f} s); as the agents saw it, the last close came "
        f"{last:.2f} s after the start (the load generator reading that many closes on the "
        f"same 2 cores; over the {sm.revoke_window_s:.1f} s from the command's start until 2 s "
        f"after, the load generator used {sm.revoke_generator_cpu_s:.2f} s of CPU and Switch "
        f"{sm.revoke_server_cpu_s:.2f} s); closed by the server: {len(closed_revoked):,} of the key's "
        f"{revoked.get('enrolled', 0):,}, {len(closed_others)} of the other "
        f"{others.get('enrolled', 0):,}")]

