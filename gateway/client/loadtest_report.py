"""The load test's report: statistics (pure), text, JSON and a PNG chart.

Latencies are kept as raw samples in seconds and summarised here with the nearest-rank
percentile (the value below which the given share of samples lies; no interpolation, so every
figure is a latency that was really observed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

#: Latency kinds, in report order, with what they time.
KINDS: dict[str, str] = {
    "enroll": "EST simpleenroll: request sent to certificate received",
    "handshake": "TCP connect + TLS handshake (client side)",
    "session": "TCP + TLS + WebSocket upgrade relayed to the upstream",
    "message_rtt": "one message through the gateway to the upstream and back",
}


def percentile(sorted_samples: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of already sorted samples (``share`` in [0, 1])."""
    if not sorted_samples:
        raise ValueError("no samples")
    rank = max(1, math.ceil(share * len(sorted_samples)))
    return sorted_samples[min(rank, len(sorted_samples)) - 1]


def summarise(samples: Sequence[float]) -> dict[str, float | int] | None:
    """count, p50, p90, p99 and max in milliseconds; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 3),
        "p90_ms": round(percentile(ordered, 0.90) * 1000, 3),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def build_report(
    *, settings: Mapping[str, Any], samples: Mapping[str, Sequence[float]],
    counts: Mapping[str, int], failures: Mapping[str, int], phases: Mapping[str, float],
    timeline: Sequence[tuple[float, int]], server: Mapping[str, Any] | None,
    closes: Mapping[str, int] | None = None, pings_while_closing: int = 0,
    generator: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as plain data (what ``--json`` writes)."""
    enroll_s = phases.get("enroll_s", 0.0)
    connect_s = phases.get("connect_s", 0.0)
    return {
        "settings": dict(settings),
        "agents": counts.get("agents", 0),
        "enrolled": counts.get("enrolled", 0),
        "connected": counts.get("connected", 0),
        "connected_at_end": counts.get("connected_at_end", 0),
        "messages": counts.get("messages", 0),
        "rates": {
            "enrollments_per_s": round(counts.get("enrolled", 0) / enroll_s, 2) if enroll_s > 0 else None,
            "handshakes_per_s": round(counts.get("connected", 0) / connect_s, 2) if connect_s > 0 else None,
        },
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "latency": {kind: summarise(samples.get(kind, ())) for kind in KINDS},
        "failures": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failures_total": sum(failures.values()),
        "sessions_closed": dict(sorted((closes or {}).items(), key=lambda kv: (-kv[1], kv[0]))),
        "pings_while_closing": pings_while_closing,
        "server": dict(server) if server is not None else None,
        "generator": dict(generator) if generator is not None else None,
        "timeline": [[round(t, 3), n] for t, n in timeline],
    }


def reconnect_figures(reopened: int, failures: Mapping[str, int],
                      time_to_reopen: Sequence[float]) -> dict[str, Any]:
    """With ``reconnect``: sessions opened again after the server ended them, the attempts that
    did not open by reason, and the time from losing a session to having it again (back-off
    included)."""
    return {"reopened": reopened,
            "failed_attempts": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
            "time_to_reopen": summarise(time_to_reopen)}


def write_json(report: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def print_report(report: Mapping[str, Any], console: Console) -> None:
    rates = report["rates"]
    console.print(
        f"[bold]Load test[/bold]: {report['agents']} agents, "
        f"{report['enrolled']} enrolled, {report['connected']} connected "
        f"({report['connected_at_end']} still connected at the end), "
        f"{report['messages']} messages")
    console.print(
        f"enrollments/s: {_fmt(rates['enrollments_per_s'])}    "
        f"handshakes/s: {_fmt(rates['handshakes_per_s'])}    "
        "phases: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in report["phases_s"].items()))
    table = Table(title="latency (ms)", title_justify="left")
    table.add_column("what")
    for column in ("count", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    for kind, summary in report["latency"].items():
        if summary is None:
            table.add_row(kind, "0", "-", "-", "-", "-")
        else:
            table.add_row(kind, str(summary["count"]), *(f"{summary[k]:.1f}" for k in
                                                         ("p50_ms", "p90_ms", "p99_ms", "max_ms")))
    console.print(table)
    if report["failures"]:
        console.print(f"[bold red]failures[/bold red]: {report['failures_total']}")
        for reason, n in report["failures"].items():
            console.print(f"  {n:>7}  {reason}")
    else:
        console.print("failures: none")
    closed = report.get("sessions_closed") or {}
    if closed:
        pings = report.get("pings_while_closing") or 0
        console.print(f"sessions closed: {sum(closed.values())}"
                      + (f" ({pings} server pings during a close left unanswered)" if pings else ""))
        for how, n in closed.items():
            console.print(f"  {n:>7}  {how}")
    reconnects = report.get("reconnects")
    if reconnects is not None:
        back = reconnects["time_to_reopen"]
        console.print(f"sessions reopened: {reconnects['reopened']}"
                      + (f" (time to reopen p50 {back['p50_ms'] / 1000:.1f}s, p99 "
                         f"{back['p99_ms'] / 1000:.1f}s, max {back['max_ms'] / 1000:.1f}s)"
                         if back else ""))
        for reason, n in reconnects["failed_attempts"].items():
            console.print(f"  {n:>7}  {reason}")
    server = report["server"]
    if server is not None:
        per = server.get("memory_per_session_kib")
        cpu = server.get("cpu_ms_per_handshake")
        console.print(
            f"server (pids {', '.join(map(str, server.get('pids', [])))}): "
            f"RSS {_fmt(server.get('rss_before_kib'))} KiB before connecting, "
            f"{_fmt(server.get('rss_hold_kib'))} KiB holding {server.get('sessions_at_sample')} sessions"
            f" → {_fmt(per)} KiB per session; CPU {_fmt(cpu)} ms per handshake")
    generator = report.get("generator")
    if generator is not None:
        print_generator(generator, console)


def print_generator(generator: Mapping[str, Any], console: Console) -> None:
    """The load generator's own CPU, and a warning for each phase it may have limited."""
    phases = generator.get("phases") or {}
    busy = generator.get("machine_busy") or {}
    parts = []
    for phase, figures in phases.items():
        part = (f"{phase} {figures['busiest_process_share']:.0%} of a core (busiest of "
                f"{generator['processes']})")
        if phase in busy:
            part += f", machine {busy[phase]:.0%} busy"
        parts.append(part)
    console.print("load generator CPU: " + ("; ".join(parts) if parts else "n/a"))
    for phase in generator.get("saturated") or []:
        console.print(f"[bold yellow]warning[/bold yellow]: a load generator process was "
                      f"{phases[phase]['busiest_process_share']:.0%} busy in the {phase} phase: "
                      "its rates show the generator's limit as much as the server's "
                      "(more --processes, or a load generator on another machine)")


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def write_png(report: Mapping[str, Any], samples: Mapping[str, Sequence[float]], path: Path) -> None:
    """Two panels: the latency distribution (empirical CDF per kind, log time axis) and the
    number of connected agents over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for kind in KINDS:
        values = sorted(samples.get(kind, ()))
        if not values:
            continue
        ms = [v * 1000 for v in values]
        share = [(i + 1) / len(ms) for i in range(len(ms))]
        left.step(ms, share, where="post", label=f"{kind} (n={len(ms)})")
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("share of samples at or below")
    left.set_title("latency distribution")
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="lower right", fontsize="small")

    timeline = report["timeline"]
    if timeline:
        right.plot([t for t, _ in timeline], [n for _, n in timeline], drawstyle="steps-post")
    right.set_xlabel("seconds since start")
    right.set_ylabel("connected agents")
    right.set_title("connected agents over time")
    right.grid(True, alpha=0.3)
    phases = report["phases_s"]
    marks = (("startup_s", "enroll"), ("enroll_s", "connect"), ("connect_s", "hold"))
    at = 0.0
    for key, label in marks:
        if key in phases:
            at += phases[key]
            right.axvline(at, color="grey", linestyle="--", linewidth=0.8)
            right.text(at, 0, f" {label}", color="grey", fontsize="small", va="bottom")
    fig.suptitle(f"switch loadtest: {report['agents']} agents, {report['connected']} connected, "
                 f"{report['failures_total']} failures")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
