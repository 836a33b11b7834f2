"""The bench's measurements. Each returns rows of ``Row``; every comparison is made in the same
run, on the same machine, with the same certificates and the same load generator."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from scripts.benchlib import env, fleet, issuance
from scripts.benchlib.rows import Options, Row
from scripts.benchlib.rows import ratio as _ratio

__all__ = ["SECTIONS", "Options", "Row"]


# --- (a) full mTLS handshakes -----------------------------------------------------------------


S_TIME_RE = re.compile(r"(\d+) connections in ([\d.]+) real seconds")


def _s_time(port: int, pki: Path, seconds: int, clients: int) -> int:
    """``clients`` parallel ``openssl s_time -new`` (full TLS 1.3 handshakes with the client
    certificate, no resumption, no SNI), each sending one plain GET and reading the reply to the
    end: without that, s_time closes before the server has read its last flight and the server
    sees a reset, not a handshake. Returns handshakes done."""
    args = ["openssl", "s_time", "-new", "-tls1_3", "-connect", f"127.0.0.1:{port}",
            "-cert", str(pki / "demo-agent.pem"), "-key", str(pki / "demo-agent.key"),
            "-www", "/bench", "-time", str(seconds)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(clients)]
    done = 0
    for proc in procs:
        out = proc.communicate(timeout=seconds + 60)[0].decode()
        match = S_TIME_RE.search(out)
        done += int(match.group(1)) if match else 0
    return done


def _handshakes(server: env.Server, port: int, pki: Path, seconds: int, clients: int,
                accepted: Callable[[], float] | None) -> dict[str, float]:
    _s_time(port, pki, 1, clients)  # warm-up
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ok0 = accepted() if accepted else 0.0
    cpu0, t0 = server.cpu(), time.monotonic()
    done = _s_time(port, pki, seconds, clients)
    wall, cpu1 = time.monotonic() - t0, server.cpu()
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen_cpu = (after_children.ru_utime + after_children.ru_stime
               - before_children.ru_utime - before_children.ru_stime)
    counted = (accepted() - ok0) if accepted else float(done)
    server_cpu = cpu1 - cpu0
    return {"handshakes": done, "server_counted": counted, "wall": wall,
            "per_s": done / wall, "server_cpu": server_cpu,
            "ms_per_hs": server_cpu * 1000 / max(done, 1),
            "server_util": server_cpu / wall, "generator_util": gen_cpu / wall}


def handshakes(deploy: env.Deployment, opts: Options) -> list[Row]:
    """Switch and nginx in alternating rounds (this machine's speed drifts by several per cent
    over minutes: alternating spreads that over both), the median of the rounds."""
    seconds = 5 if opts.quick else 10
    rounds = 1 if opts.quick else 3
    clients = 4
    rows: list[Row] = []
    cores = os.cpu_count() or 1
    for workers in sorted({1, cores}):
        s_runs, n_runs, quiet_runs, bare_runs = [], [], [], []
        for _ in range(rounds):
            with env.echo(deploy, opts.work), env.switch(deploy, workers, opts.work) as sw:
                s_runs.append(_handshakes(sw, deploy.gateway, deploy.pki, seconds, clients,
                                          lambda: deploy.metric("switch_handshakes_total", result="ok")))
            with env.nginx(deploy, workers, opts.work) as (ng, port):
                n_runs.append(_handshakes(ng, port, deploy.pki, seconds, clients, None))
            if workers == 1:
                with env.nginx(deploy, workers, opts.work, access_log=False) as (ng, port):
                    quiet_runs.append(_handshakes(ng, port, deploy.pki, seconds, clients, None))
                with env.bare_tls(deploy, opts.work) as (bare, port):
                    bare_runs.append(_handshakes(bare, port, deploy.pki, seconds, clients, None))
        s, n = _median_run(s_runs), _median_run(n_runs)
        quiet = (f"; nginx without its access log: {_median_run(quiet_runs)['ms_per_hs']:.2f} ms"
                 if quiet_runs else "")
        label = "1 worker each" if workers == 1 else f"{workers} workers each (all cores)"
        cpu_ratio = _ratio(s["ms_per_hs"], n["ms_per_hs"])
        spread = ", ".join(f"{a['ms_per_hs']:.2f}/{b['ms_per_hs']:.2f}" for a, b in zip(s_runs, n_runs, strict=True))
        rows.append(Row(
            f"(a) server CPU per full mTLS handshake, {label}",
            f"{s['ms_per_hs']:.2f} ms", f"{n['ms_per_hs']:.2f} ms (nginx)", cpu_ratio,
            "≤ 1.25× nginx", cpu_ratio is not None and cpu_ratio <= 1.25,
            f"median of {rounds} alternating rounds (Switch/nginx ms: {spread}); server busy "
            f"{s['server_util']:.0%} / {n['server_util']:.0%} of a core, generator "
            f"{s['generator_util']:.0%} / {n['generator_util']:.0%}"
            + (f"; Switch's metrics counted {s['server_counted']:.0f} verified handshakes for "
               f"the generator's {s['handshakes']:.0f}" if workers == 1 else "") + quiet))
        if bare_runs:
            b = _median_run(bare_runs)
            rows.append(Row(
                "(a) the same, bare Trio + pyOpenSSL server (Switch's TLS layer, no Switch)",
                f"{b['ms_per_hs']:.2f} ms", f"{n['ms_per_hs']:.2f} ms (nginx)",
                _ratio(b["ms_per_hs"], n["ms_per_hs"]), "", None,
                "the floor of this stack: handshake, read, 426, close; no SNI routing, peer "
                "check, session or log line (scripts/benchlib/bare_tls.py)"))
        rows.append(Row(
            f"(a) full mTLS handshakes per second, {label}",
            f"{s['per_s']:.0f}/s", f"{n['per_s']:.0f}/s (nginx)", _ratio(s["per_s"], n["per_s"]),
            "", None, "throughput with the generator on the same cores; the CPU row is the budget"))
    return rows


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["ms_per_hs"])[len(runs) // 2]


# --- (b) idle sessions and (d) revoke-to-closed ------------------------------------------------


def _loadtest(deploy: env.Deployment, port: int, agents: int, pids: tuple[int, ...], hold: float,
              **changes: Any) -> dict[str, Any]:
    from gateway.client.loadtest import LoadSettings, run_loadtest

    during_hold = changes.pop("during_hold", None)
    settings = attrs.evolve(LoadSettings(
        agents=agents, processes=2, gateway=("127.0.0.1", port), enroll=("127.0.0.1", deploy.enroll),
        server_name=env.HOST, key_secret=deploy.secret, ca_file=deploy.pki / "dev-root-ca.pem",
        connect_rate=0, enroll_concurrency=16, hold_s=hold, message_interval_s=0,
        timeout_s=60, server_pids=pids), **changes)
    report, _ = run_loadtest(settings, during_hold=during_hold)
    return report


def idle(deploy: env.Deployment, opts: Options) -> list[Row]:
    cores = os.cpu_count() or 1
    # A relayed session holds two descriptors (agent and upstream): with the 20,000-per-process
    # limit, one process holds at most ~9,900; 15,000 need two processes.
    runs = [(1, 2000 if opts.quick else 9000)]
    if not opts.quick:
        runs.append((cores, 15000))
    rows = []
    for workers, agents in runs:
        with env.echo(deploy, opts.work), env.switch(deploy, workers, opts.work) as sw:
            s = _loadtest(deploy, deploy.gateway, agents, (sw.root_pid,), 12.0)
        # Switch runs beside nginx only for its EST port: the agents enroll there, then connect
        # to nginx, which trusts the same provisioning CA; only nginx's memory is read.
        with env.echo(deploy, opts.work), env.switch(deploy, 1, opts.work), \
                env.nginx(deploy, workers, opts.work) as (ng, port):
            n = _loadtest(deploy, port, agents, (ng.root_pid,), 12.0)
        s_per = (s["server"] or {}).get("memory_per_session_kib") or 0.0
        n_per = (n["server"] or {}).get("memory_per_session_kib") or 0.0
        ratio = _ratio(s_per, n_per)
        label = f"{workers} process{'es' if workers > 1 else ''}"
        rows.append(Row(
            f"(b) idle sessions held, {label} (mTLS + WebSocket relayed, pings every 5 s)",
            f"{s['connected_at_end']}/{agents}", f"{n['connected_at_end']}/{agents} (nginx)", None,
            "≥ 15,000 per Switch process", s["connected_at_end"] >= 15000 and workers == 1,
            f"failures Switch {s['failures_total']}, nginx {n['failures_total']}"))
        rows.append(Row(
            f"(b) server memory per idle session, {label}",
            f"{s_per:.1f} KiB", f"{n_per:.1f} KiB (nginx)", ratio, "≤ 40 KiB", 0 < s_per <= 40,
            "resident memory of the server's process tree while holding, minus before connecting, "
            "per session; includes the upstream connection"))
    return rows


def _revoke_run(deploy: env.Deployment, cli: Callable[..., Any], gateways: list[int],
                enroll: int, pids: tuple[int, ...], name: str, sessions: int) -> dict[str, Any]:
    """``sessions`` sessions of a new key over ``gateways``, the key revoked during the hold;
    the seconds from the command's start and return to the last session closed."""
    import json

    key = json.loads(cli("keys", "generate", "demo", name, "--json").stdout)["secret"]
    marks: dict[str, float] = {}

    def revoke_now(_: Any) -> None:
        marks["start"] = time.time()
        cli("keys", "revoke", "demo", name, "--reason", "bench", "--confirm", name)
        marks["cli_done"] = time.time()

    report = _loadtest(deploy, gateways[0], sessions, pids, 60.0, key_secret=key,
                       enroll=("127.0.0.1", enroll), until_all_closed=True,
                       during_hold=revoke_now,
                       more_gateways=tuple(("127.0.0.1", p) for p in gateways[1:]))
    closed = report["closed_by_server_at"]
    return {"last": max(closed) - marks["start"] if closed else float("inf"),
            "after_commit": max(closed) - marks["cli_done"] if closed else float("inf"),
            "cli": marks["cli_done"] - marks["start"], "closed": len(closed),
            "connected": report["connected"]}


def revoke(deploy: env.Deployment, opts: Options) -> list[Row]:
    from scripts.benchlib import several

    sessions = 1000
    with env.echo(deploy, opts.work), env.switch(deploy, 1, opts.work) as sw:
        lite = _revoke_run(deploy, deploy.cli, [deploy.gateway], deploy.enroll, (sw.root_pid,),
                           "revoke-bench", sessions)
    with env.echo(deploy, opts.work), several.several(deploy, opts.work) as hosts:
        first = hosts.hosts[0]
        shared = _revoke_run(deploy, first.cli, [h.gateway for h in hosts.hosts], first.enroll,
                             hosts.root_pids(), "revoke-bench-pg", sessions)
    rows = []
    for label, run in ((f"{sessions} dependent sessions closed", lite),
                       (f"{sessions} dependent sessions closed, PostgreSQL store, "
                        f"{several.HOSTS} Switch processes as hosts (revoked through the first)",
                        shared)):
        rows.append(Row(
            f"(d) `switch keys revoke` to the last of {label}",
            f"{run['last']:.2f} s", "—", None, "≤ 1 s", run["last"] <= 1.0,
            f"{run['closed']} of {run['connected']} sessions closed by the server (1008); "
            f"{run['after_commit']:.2f} s after the command returned (the command itself, a new "
            f"Python process, took {run['cli']:.2f} s)"))
    return rows


# --- (e) relay throughput -----------------------------------------------------------------------


def _relay_client(port: int, deploy: env.Deployment, seconds: float, size: int) -> tuple[int, float]:
    import ssl

    from websockets.sync.client import connect

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(deploy.pki / "dev-root-ca.pem"))
    ctx.load_cert_chain(str(deploy.pki / "demo-agent.pem"), str(deploy.pki / "demo-agent.key"))
    payload = os.urandom(size)
    moved = 0
    with connect(f"wss://{env.HOST}:{port}/", ssl=ctx, server_hostname=env.HOST,
                 sock=__import__("socket").create_connection(("127.0.0.1", port)),
                 max_size=None, compression=None) as ws:
        for _ in range(20):  # warm-up
            ws.send(payload)
            ws.recv()
        start = time.monotonic()
        deadline = start + seconds
        while time.monotonic() < deadline:
            ws.send(payload)
            ws.send(payload)
            ws.recv()
            ws.recv()
            moved += 4 * size  # each message crosses the server twice (to and from the upstream)
        return moved, time.monotonic() - start


def relay(deploy: env.Deployment, opts: Options) -> list[Row]:
    seconds = 4 if opts.quick else 10
    size = 64 * 1024
    with env.echo(deploy, opts.work), env.switch(deploy, 1, opts.work) as sw:
        cpu0 = sw.cpu()
        s_bytes, s_wall = _relay_client(deploy.gateway, deploy, seconds, size)
        s_cpu = sw.cpu() - cpu0
    with env.echo(deploy, opts.work), env.nginx(deploy, 1, opts.work) as (ng, port):
        cpu0 = ng.cpu()
        n_bytes, n_wall = _relay_client(port, deploy, seconds, size)
        n_cpu = ng.cpu() - cpu0
    s_per_core = s_bytes / max(s_cpu, 1e-9) / 2**20
    n_per_core = n_bytes / max(n_cpu, 1e-9) / 2**20
    ratio = _ratio(s_per_core, n_per_core)
    return [Row(
        "(e) relay throughput on one session, per core of server CPU (64 KiB messages, echoed)",
        f"{s_per_core:.0f} MiB/s", f"{n_per_core:.0f} MiB/s (nginx proxy_pass)", ratio,
        "≥ 0.4× nginx", ratio is not None and ratio >= 0.4,
        f"wall-clock {s_bytes / s_wall / 2**20:.0f} vs {n_bytes / n_wall / 2**20:.0f} MiB/s with "
        "the client and the echo upstream on the same 2 cores")]


# --- (i) LightLock against trio's locks on the relay's write path ------------------------------


def locks(deploy: env.Deployment, opts: Options) -> list[Row]:
    """In this process: no server, no deployment (``scripts/benchlib/locks.py``)."""
    from scripts.benchlib import locks as bench_locks

    return [Row(measure, light, lock, ratio, note=note)
            for measure, light, lock, ratio, note in bench_locks.rows(opts.quick)]


SECTIONS: dict[str, Callable[[env.Deployment, Options], list[Row]]] = {
    "a": handshakes, "b": idle, "c": issuance.est, "d": revoke, "e": relay,
    "f": fleet.fleet, "i": locks,
}
