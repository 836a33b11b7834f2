"""Tools on the command line: ``agent`` (the reference agent), ``echo`` (a WebSocket echo
upstream) and ``loadtest`` (simulated agents against a running Switch).

They drive ``gateway.client``, which speaks to Switch over the network only; trio, the client
modules, rich's progress display and matplotlib are imported when a tool runs, not before."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
from pathlib import Path
from typing import Any

from gateway.cli.common import load
from gateway.cli.exits import EXIT_OK, EXIT_REFUSED, CliExit


def host_port(value: str) -> tuple[str, int]:
    from config.load import parse_listen

    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def duration(value: str) -> float:
    """A duration on the command line: as in the config ("500ms", "10s", "1h30m"), or a bare
    number of seconds ("0", "2.5"; the config's TOML numbers, which a command line cannot type)."""
    from config.durations import parse_duration

    try:
        number = float(value)
    except ValueError:
        number = None
    try:
        return parse_duration(value if number is None else number)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _provisioning_secret(args: argparse.Namespace) -> str | None:
    """The provisioning key from ``--key-file`` or ``$SWITCH_PROVISIONING_KEY`` (never argv)."""
    if args.key_file:
        try:
            return Path(args.key_file).read_text().strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise CliExit("usage", f"cannot read --key-file {args.key_file}: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from exc
    return os.environ.get("SWITCH_PROVISIONING_KEY", "").strip() or None


def cmd_agent(args: argparse.Namespace) -> int:
    import trio

    from gateway.client.agent import Agent, AgentError, AgentSettings
    from gateway.client.est_client import EstClientError

    secret = _provisioning_secret(args)
    if args.ca_file is None and args.pin is None:
        raise CliExit("usage", "authenticate the server with --ca-file or --pin")
    settings = AgentSettings(
        directory=Path(args.dir), server_name=args.server_name, gateway=args.gateway,
        enroll=args.enroll, ca_file=Path(args.ca_file) if args.ca_file else None,
        pin_sha256=args.pin, key_secret=secret, common_name=args.name, path=args.path,
        renew_before=(dt.timedelta(seconds=args.renew_before)
                      if args.renew_before is not None else None),
    )
    agent = Agent(settings)
    try:
        if args.once is not None:
            print(trio.run(agent.once, args.once))
        else:
            trio.run(agent.run_forever)
    except (AgentError, EstClientError) as exc:
        raise CliExit("agent_failed", str(exc)) from exc
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_echo(args: argparse.Namespace) -> int:
    import trio

    from gateway.client.echo import serve_echo

    host, port = args.listen

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(lambda task_status: serve_echo(
                host, port, reuse_port=args.reuse_port, task_status=task_status))
            print(f"echo upstream on ws://{host}:{bound}/", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)
    return EXIT_OK


def _loadtest_settings(args: argparse.Namespace) -> Any:
    """LoadSettings from the options, filling what is missing from the local config (listen
    addresses, the tenant's first hostname, the server certificate's public-key pin, the pid)."""
    from gateway.client import procstat
    from gateway.client.est_client import spki_sha256
    from gateway.client.loadtest import LoadSettings
    from gateway.client.loadtest_settings import check_source_addresses
    from gateway.runfiles import PID_FILE

    secret = _provisioning_secret(args)
    if not secret:
        raise CliExit("usage", "give the provisioning key with --key-file FILE or "
                                "$SWITCH_PROVISIONING_KEY")
    gateway, enroll, server_name, pin = args.gateway, args.enroll, args.server_name, args.pin
    server_pids: tuple[int, ...] = tuple(args.server_pid or ())
    needs_config = (gateway is None or enroll is None or server_name is None
                    or (args.ca_file is None and pin is None))
    if needs_config or not (server_pids or args.no_server_stats):
        try:
            cfg = load(args)
        except CliExit:
            if needs_config:
                raise
            cfg = None
        if cfg is not None:
            from config.tls_material import load_server_credentials

            def local(listen: Any) -> tuple[str, int]:
                host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host, listen.host)
                return host, int(listen.port)

            gateway = gateway or local(cfg.gateway.listen)
            enroll = enroll or local(cfg.enroll.listen)
            if server_name is None:
                name = args.tenant or cfg.default_tenant or (
                    next(iter(cfg.tenants)) if len(cfg.tenants) == 1 else None)
                if name is None or name not in cfg.tenants:
                    raise CliExit("usage", "name the tenant with --tenant (or --server-name)")
                server_name = cfg.tenants[name].hostnames[0]
            if args.ca_file is None and pin is None:
                chain, _ = load_server_credentials(cfg.tls)
                pin = spki_sha256(chain[0])
            if not server_pids and not args.no_server_stats:
                pid = procstat.read_pid_file(cfg.state_dir / PID_FILE)
                server_pids = (pid,) if pid is not None else ()
    assert gateway is not None and enroll is not None and server_name is not None
    try:
        sources = check_source_addresses(args.source_address or (), (gateway,))
    except ValueError as exc:
        raise CliExit("usage", f"--source-address: {exc}") from exc
    return LoadSettings(
        agents=args.agents, processes=args.processes or (os.cpu_count() or 1),
        gateway=gateway, enroll=enroll, server_name=server_name, key_secret=secret,
        ca_file=Path(args.ca_file) if args.ca_file else None, pin_sha256=pin, path=args.path,
        connect_rate=args.connect_rate, connect_concurrency=args.connect_concurrency,
        enroll_concurrency=args.enroll_concurrency,
        hold_s=args.hold, message_interval_s=args.message_interval,
        message_size=args.message_size, timeout_s=args.timeout,
        key_type=args.key_type, tls_version=args.tls, server_pids=server_pids,
        reconnect=args.reconnect, source_addresses=sources,
    )


def cmd_loadtest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gateway.client import loadtest_report
    from gateway.client.loadtest import run_loadtest

    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise CliExit("usage", "--png needs matplotlib: pip install 'mtls-switch[loadtest]'") from exc
    settings = _loadtest_settings(args)
    err = Console(stderr=True)
    bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=err,
                   disable=args.quiet, transient=False)
    enrolled = bar.add_task("enrolled", total=settings.agents, note="")
    connected = bar.add_task("connected", total=settings.agents, note="", start=False)
    holding = bar.add_task("hold", total=max(settings.hold_s, 0.001), note="", start=False)
    marks: dict[str, float] = {}

    def progress(phase: str, fleet: Any, now: float) -> None:
        failed = fleet.total(1)
        bar.update(enrolled, completed=fleet.total(0) + failed,
                   note=f"{failed} failed" if failed else "")
        if phase in ("connect", "hold", "report"):
            bar.start_task(connected)
            bad = fleet.total(3)
            bar.update(connected, completed=fleet.total(2) + bad,
                       note=f"{fleet.total(4)} open" + (f", {bad} failed" if bad else ""))
        if phase in ("hold", "report"):
            bar.start_task(holding)
            marks.setdefault("hold", now)
            bar.update(holding, completed=min(now - marks["hold"], settings.hold_s),
                       note=f"{fleet.total(5)} messages")

    try:
        with bar:
            report, samples = run_loadtest(settings, progress=progress)
    except TimeoutError as exc:
        raise CliExit("loadtest_stalled", str(exc)) from exc
    except KeyboardInterrupt:
        return 130
    loadtest_report.print_report(report, Console())
    if args.json:
        loadtest_report.write_json(report, Path(args.json))
    if args.png:
        loadtest_report.write_png(report, samples, Path(args.png))
    ok = report["connected"] == settings.agents and report["failures_total"] <= args.max_failures
    return EXIT_OK if ok else EXIT_REFUSED
