"""The ``switch`` command line.

A thin shell over ``config`` (loading, checks, init) and ``enroll.authority`` (keys, service toggle,
issuers, audit). Every command takes ``-c/--config`` (default ``$SWITCH_CONFIG`` or
``./switch.toml``); list commands take ``--json``. Refusals print one line on stderr that starts
with the stable reason code and exit non-zero:

====  =====================================================================
exit  meaning
====  =====================================================================
0     done
1     refused by a rule (limit reached, wrong state, name taken, missing reason,
      confirmation mismatch, ...), a check failed (``config check``, ``audit verify``),
      or ``reload`` found no server or no confirmation (``not_running``, ``reload_unconfirmed``)
2     usage error (unknown command or option)
3     not found (unknown tenant, key or certificate)
4     the store could not be opened or written
5     the configuration does not load (``config_invalid``; ``reload_refused`` when the
      running server refused it)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from config.check import check_config, format_problems
from config.errors import ConfigError
from config.load import load_config
from config.model import SwitchConfig
from enroll.authority import Authority
from enroll.errors import EnrollError
from gateway.cli.exits import exit_code
from gateway.logs import FORMAT_ENV, FORMATS
from gateway.logs import configure as configure_logging

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 5


class CliExit(Exception):
    """Stop the command with ``code`` after printing ``message`` on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _default_config() -> str:
    return os.environ.get("SWITCH_CONFIG", "switch.toml")


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def _load(args: argparse.Namespace) -> SwitchConfig:
    path = Path(args.config)
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliExit(
            EXIT_CONFIG,
            f"config_invalid: {path} does not load:\n{format_problems(exc.problems)}",
        ) from exc


def _authority(args: argparse.Namespace) -> Authority:
    return Authority.open(_load(args))


def _emit(args: argparse.Namespace, payload: Any, text: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True, default=_json_default))
    else:
        print(text())


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value"):  # enums
        return value.value
    raise TypeError(f"cannot encode {type(value).__name__}")


def _as_dict(record: object) -> dict[str, Any]:
    return {k: _plain(v) for k, v in attrs.asdict(record, recurse=False).items()}  # type: ignore[arg-type]


def _plain(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "value") and not isinstance(value, int | str):
        return value.value
    return value


def _when(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def _state(value: object) -> str:
    return str(getattr(value, "value", value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


# --- init, config, serve -----------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from enroll.bootstrap import init_deployment

    try:
        path = init_deployment(Path(args.directory), now=_now(), keystore=args.keystore)
    except FileExistsError as exc:
        raise CliExit(EXIT_REFUSED, f"deployment_exists: {exc}") from exc
    print(f"Created a Switch deployment in {path.parent}")
    print(f"  config:      {path}")
    print(f"  dev PKI:     {path.parent / 'pki'} (for development only)")
    print(f"  state:       {path.parent / 'state'}")
    print("Next: switch -c", path, "config check")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    path = Path(args.config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        problems = list(exc.problems)
        if exc.partial is not None:  # the checks that can still run on what did load
            flagged = {(p.file, p.key) for p in problems}
            problems += [p for p in check_config(exc.partial, _now())
                         if (p.file, p.key) not in flagged and p not in problems]
        print(format_problems(problems), file=sys.stderr)
        failed = sum(1 for p in problems if p.is_error)
        print(f"{path}: {failed} error(s), {len(problems) - failed} warning(s); the "
              "configuration does not load", file=sys.stderr)
        return EXIT_REFUSED
    problems = check_config(cfg, _now())
    if problems:
        print(format_problems(problems), file=sys.stderr)
    errors = [p for p in problems if p.severity == "error"]
    warnings = len(problems) - len(errors)
    if errors:
        print(f"{path}: {len(errors)} error(s), {warnings} warning(s)", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{path}: OK ({len(cfg.tenants)} tenant(s), {warnings} warning(s))")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import trio

    from gateway import serve
    from gateway.workers import GENERATION_ENV, SNAPSHOT_ENV

    # Until the server's own signal handling is in place, a SIGHUP (reload) must not kill the
    # process (Python's default); the config is read after this point anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    if workers < 1:
        raise CliExit(EXIT_USAGE, "usage: --workers must be at least 1")
    try:
        if args.worker is not None and os.environ.get(SNAPSHOT_ENV):
            # A worker runs the supervisor's snapshot, never the files on disk (config.snapshot).
            from config.snapshot import load_snapshot

            cfg = load_snapshot(Path(args.config), Path(os.environ[SNAPSHOT_ENV]))
            generation = int(os.environ.get(GENERATION_ENV, "1"))
            trio.run(functools.partial(serve.main, cfg, worker=args.worker, generation=generation))
            return EXIT_OK
        cfg = _load(args)
        if args.worker is not None or workers == 1:
            trio.run(functools.partial(serve.main, cfg, worker=args.worker))
            return EXIT_OK
        from gateway.workers import Supervisor

        return trio.run(Supervisor(cfg, workers).run)
    except ConfigError as exc:  # a file changed since the check above, or OpenSSL refused it
        raise CliExit(EXIT_CONFIG, f"config_invalid: {args.config} does not load:\n"
                      f"{format_problems(exc.problems)}") from exc


def cmd_reload(args: argparse.Namespace) -> int:
    """Signal the running ``switch serve`` (its pid is in the state directory) to reload, then
    wait for and print the result it records."""
    import signal
    import time

    from gateway.serve import PID_FILE, RELOAD_STATUS_GLOB

    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:  # checked here first: a config that does not load is never sent
        raise CliExit(EXIT_CONFIG, f"config_invalid: {args.config} does not load; nothing was "
                      "signalled and the running config stays in force:\n"
                      f"{format_problems(exc.problems)}") from exc
    pid_file = cfg.state_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise CliExit(EXIT_REFUSED, f"not_running: no running Switch for this config ({pid_file})") from exc

    def statuses() -> dict[Path, int]:
        out = {}
        for path in cfg.state_dir.glob(RELOAD_STATUS_GLOB):
            with contextlib.suppress(OSError):
                out[path] = path.stat().st_mtime_ns
        return out

    # One status file per serving process (each worker, or the single server): wait for all.
    before = statuses()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise CliExit(EXIT_REFUSED, f"not_running: process {pid} from {pid_file} is gone") from exc
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        now = statuses()
        changed = [p for p, mtime in now.items() if before.get(p) != mtime]
        if changed and all(now.get(p) != mtime for p, mtime in before.items()):
            results = []
            for path in sorted(changed):
                with contextlib.suppress(OSError, ValueError):
                    results.append(json.loads(path.read_text()))
            if len(results) < len(changed):
                time.sleep(0.05)  # a file being replaced: read again
                continue
            failed = [r for r in results if not r["ok"]]
            if failed:
                errors = "\n".join(dict.fromkeys(e for r in failed for e in r["errors"]))
                raise CliExit(EXIT_CONFIG, "reload_refused: the configuration does not load in the "
                              f"server; the running config stays in force:\n{errors}")
            generations = sorted({r["generation"] for r in results})
            print("reloaded: config generation " + ", ".join(map(str, generations))
                  + (f" ({len(results)} processes)" if len(results) > 1 else ""))
            for key in dict.fromkeys(k for r in results for k in r["restart_needed"]):
                print(f"  {key} changed: it is read at start only, restart to apply it")
            return EXIT_OK
        time.sleep(0.05)
    raise CliExit(EXIT_REFUSED, f"reload_unconfirmed: signalled process {pid}, not every process "
                  f"reported a result within {args.wait}s")


def _host_port(value: str) -> tuple[str, int]:
    from config.load import parse_listen

    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _provisioning_secret(args: argparse.Namespace) -> str | None:
    """The provisioning key from ``--key-file`` or ``$SWITCH_PROVISIONING_KEY`` (never argv)."""
    if args.key_file:
        try:
            return Path(args.key_file).read_text().strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise CliExit(EXIT_USAGE, f"usage: cannot read --key-file {args.key_file}: "
                                      f"{getattr(exc, 'strerror', None) or exc}") from exc
    return os.environ.get("SWITCH_PROVISIONING_KEY", "").strip() or None


def cmd_agent(args: argparse.Namespace) -> int:
    import trio

    from config.durations import parse_duration
    from gateway.client.agent import Agent, AgentError, AgentSettings
    from gateway.client.est_client import EstClientError

    secret = _provisioning_secret(args)
    if args.ca_file is None and args.pin is None:
        raise CliExit(EXIT_USAGE, "usage: authenticate the server with --ca-file or --pin")
    settings = AgentSettings(
        directory=Path(args.dir), server_name=args.server_name, gateway=args.gateway,
        enroll=args.enroll, ca_file=Path(args.ca_file) if args.ca_file else None,
        pin_sha256=args.pin, key_secret=secret, common_name=args.name, path=args.path,
        renew_before=(dt.timedelta(seconds=parse_duration(args.renew_before))
                      if args.renew_before is not None else None),
    )
    agent = Agent(settings)
    try:
        if args.once is not None:
            print(trio.run(agent.once, args.once))
        else:
            trio.run(agent.run_forever)
    except (AgentError, EstClientError) as exc:
        raise CliExit(EXIT_REFUSED, f"agent_failed: {exc}") from exc
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_echo(args: argparse.Namespace) -> int:
    import trio

    from gateway.client.echo import serve_echo

    host, port = args.listen

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(lambda task_status: serve_echo(host, port, task_status=task_status))
            print(f"echo upstream on ws://{host}:{bound}/", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)
    return EXIT_OK


def _loadtest_settings(args: argparse.Namespace) -> Any:
    """LoadSettings from the options, filling what is missing from the local config (listen
    addresses, the tenant's first hostname, the server certificate's public-key pin, the pid)."""
    from config.durations import parse_duration
    from gateway.client import procstat
    from gateway.client.est_client import spki_sha256
    from gateway.client.loadtest import LoadSettings
    from gateway.serve import PID_FILE

    secret = _provisioning_secret(args)
    if not secret:
        raise CliExit(EXIT_USAGE, "usage: give the provisioning key with --key-file FILE or "
                                  "$SWITCH_PROVISIONING_KEY")
    gateway, enroll, server_name, pin = args.gateway, args.enroll, args.server_name, args.pin
    server_pids: tuple[int, ...] = tuple(args.server_pid or ())
    needs_config = (gateway is None or enroll is None or server_name is None
                    or (args.ca_file is None and pin is None))
    if needs_config or not (server_pids or args.no_server_stats):
        try:
            cfg = _load(args)
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
                    raise CliExit(EXIT_USAGE, "usage: name the tenant with --tenant (or --server-name)")
                server_name = cfg.tenants[name].hostnames[0]
            if args.ca_file is None and pin is None:
                chain, _ = load_server_credentials(cfg.tls)
                pin = spki_sha256(chain[0])
            if not server_pids and not args.no_server_stats:
                pid = procstat.read_pid_file(cfg.state_dir / PID_FILE)
                server_pids = (pid,) if pid is not None else ()
    assert gateway is not None and enroll is not None and server_name is not None
    return LoadSettings(
        agents=args.agents, processes=args.processes or (os.cpu_count() or 1),
        gateway=gateway, enroll=enroll, server_name=server_name, key_secret=secret,
        ca_file=Path(args.ca_file) if args.ca_file else None, pin_sha256=pin, path=args.path,
        connect_rate=args.connect_rate, enroll_concurrency=args.enroll_concurrency,
        hold_s=parse_duration(args.hold), message_interval_s=parse_duration(args.message_interval),
        message_size=args.message_size, timeout_s=parse_duration(args.timeout),
        key_type=args.key_type, tls_version=args.tls, server_pids=server_pids,
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
            raise CliExit(EXIT_USAGE, "usage: --png needs matplotlib: pip install 'mtls-switch[loadtest]'") from exc
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
        raise CliExit(EXIT_REFUSED, f"loadtest_stalled: {exc}") from exc
    except KeyboardInterrupt:
        return 130
    loadtest_report.print_report(report, Console())
    if args.json:
        loadtest_report.write_json(report, Path(args.json))
    if args.png:
        loadtest_report.write_png(report, samples, Path(args.png))
    ok = report["connected"] == settings.agents and report["failures_total"] <= args.max_failures
    return EXIT_OK if ok else EXIT_REFUSED


# --- keys --------------------------------------------------------------------------------------


def _key_row(k: Any) -> dict[str, Any]:
    return {
        "id": k.id,
        "tenant": k.tenant,
        "name": k.name,
        "state": _state(k.state),
        "profile": k.profile,
        "created_at": _plain(k.created_at),
        "last_used_at": _plain(k.last_used_at),
        "certificates_issued": k.certificates_issued,
    }


def cmd_keys_generate(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        record, secret = auth.generate_key(
            args.tenant, args.name, actor=args.actor, profile=args.profile
        )
    payload = {**_key_row(record), "secret": secret}

    def text() -> str:
        return (
            f'Created provisioning key "{record.name}" ({record.id}) for tenant {record.tenant}.\n'
            "Secret — shown once, it cannot be shown again; store it now:\n\n"
            f"    {secret}\n"
        )

    _emit(args, payload, text)
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        keys = auth.list_keys(args.tenant)
    rows = [_key_row(k) for k in keys]
    _emit(
        args,
        rows,
        lambda: _table(
            ["NAME", "ID", "STATE", "CREATED", "LAST USED", "CERTS", "PROFILE"],
            [
                [k.name, k.id, _state(k.state), _when(k.created_at), _when(k.last_used_at),
                 str(k.certificates_issued), k.profile or "-"]
                for k in keys
            ],
        ),
    )
    return EXIT_OK


def cmd_keys_rename(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        auth.rename_key(args.tenant, args.name, args.new_name, actor=args.actor)
    print(f'Renamed key "{args.name}" to "{args.new_name}" in tenant {args.tenant}.')
    return EXIT_OK


def cmd_keys_suspend(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        auth.suspend_key(args.tenant, args.name, reason=args.reason or "", actor=args.actor)
    print(
        f'Suspended key "{args.name}" in tenant {args.tenant}: it issues no certificates; '
        "certificates it issued still connect."
    )
    return EXIT_OK


def cmd_keys_reactivate(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        auth.reactivate_key(args.tenant, args.name, actor=args.actor)
    print(f'Reactivated key "{args.name}" in tenant {args.tenant}.')
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        auth.revoke_key(
            args.tenant, args.name, reason=args.reason or "", confirm=args.confirm or "",
            actor=args.actor,
        )
    print(
        f'Revoked key "{args.name}" in tenant {args.tenant}. This is permanent: certificates it '
        "issued no longer connect."
    )
    return EXIT_OK


# --- service and issuers -----------------------------------------------------------------------


def cmd_service(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        if args.service_cmd == "enable":
            auth.enable_service(args.tenant, actor=args.actor)
            print(f"Provisioning service enabled for tenant {args.tenant}.")
        elif args.service_cmd == "disable":
            auth.disable_service(args.tenant, actor=args.actor)
            print(
                f"Provisioning service disabled for tenant {args.tenant}: enrollment stops and "
                "provisioned certificates are no longer trusted."
            )
        else:
            enabled = auth.service_enabled(args.tenant)
            _emit(
                args,
                {"tenant": args.tenant, "provisioning_enabled": enabled},
                lambda: f"{args.tenant}: provisioning service {'enabled' if enabled else 'disabled'}",
            )
    return EXIT_OK


def _issuer_row(i: Any, enabled: bool) -> dict[str, Any]:
    return {
        "id": i.id,
        "tenant": i.tenant,
        "subject": getattr(i, "subject", None),
        "not_before": _plain(i.not_before),
        "not_after": _plain(i.not_after),
        "retired_at": _plain(i.retired_at),
        # What the gateway trusts now: nothing while the service is disabled.
        "trusted": bool(i.trusted and enabled),
        "trusted_when_enabled": i.trusted,
        "sha256": getattr(i, "sha256", None),
    }


def _trusted_cell(i: Any, enabled: bool) -> str:
    if not i.trusted:
        return "no"
    return "yes" if enabled else "no (service disabled)"


def cmd_ca_show(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        issuers = auth.list_issuers(args.tenant)
        enabled = auth.service_enabled(args.tenant)
    if args.pem:
        if not enabled and issuers:
            print(f"switch: provisioning service disabled for tenant {args.tenant}: the gateway "
                  "trusts none of its issuers (switch service enable)", file=sys.stderr)
        for i in issuers:
            if i.trusted and enabled:
                sys.stdout.write(i.cert_pem if isinstance(i.cert_pem, str) else i.cert_pem.decode())
        return EXIT_OK
    state = "enabled" if enabled else "disabled: the gateway trusts none of these issuers"
    _emit(
        args,
        {"tenant": args.tenant, "provisioning_enabled": enabled,
         "issuers": [_issuer_row(i, enabled) for i in issuers]},
        lambda: (
            f"tenant {args.tenant}: provisioning service {state}\n"
            + _table(
                ["ID", "NOT BEFORE", "NOT AFTER", "STATUS", "TRUSTED"],
                [
                    [i.id, _when(i.not_before), _when(i.not_after),
                     "retired " + _when(i.retired_at) if i.retired_at else "current",
                     _trusted_cell(i, enabled)]
                    for i in issuers
                ],
            )
        ),
    )
    return EXIT_OK


def cmd_ca_renew(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        issuer = auth.renew_issuer(args.tenant, actor=args.actor)
    print(
        f"New provisioning issuer {issuer.id} for tenant {args.tenant}, valid until "
        f"{_when(issuer.not_after)}; older issuers stay trusted until what they issued expires."
    )
    return EXIT_OK


# --- certificates and requests ----------------------------------------------------------------


def _issuance(args: argparse.Namespace) -> Any:
    from enroll.issuance import Issuance

    return Issuance(_authority(args))


def cmd_certs_list(args: argparse.Namespace) -> int:
    issuance = _issuance(args)
    with _closing(issuance.authority):
        records = issuance.list_certificates(args.tenant, key=args.key)
    rows = [{k: v for k, v in attrs.asdict(r).items() if k != "pem"} for r in records]
    _emit(args, rows, lambda: _table(
        ["SERIAL", "SUBJECT", "KEY", "NOT AFTER", "STATE", "SHA256"],
        [[r.serial, r.subject, r.key_id or "-", _when(r.not_after), r.state, r.sha256[:16] + "…"]
         for r in records]))
    return EXIT_OK


def cmd_certs_revoke(args: argparse.Namespace) -> int:
    issuance = _issuance(args)
    with _closing(issuance.authority):
        record = issuance.revoke_certificate(args.serial, reason=args.reason, actor=args.actor,
                                             tenant=args.tenant)
    print(f"Revoked certificate {record.serial} ({record.subject}) of tenant {record.tenant}.")
    return EXIT_OK


def cmd_requests_list(args: argparse.Namespace) -> int:
    issuance = _issuance(args)
    with _closing(issuance.authority):
        requests = issuance.list_requests(args.tenant, None if args.all else "pending")
    rows = [attrs.asdict(r) for r in requests]
    _emit(args, rows, lambda: _table(
        ["ID", "TENANT", "SUBJECT", "KEY", "OPERATION", "STATE", "CREATED"],
        [[r.id, r.tenant, r.subject, r.key_id or "-", r.operation, r.state, _when(r.created_at)]
         for r in requests]))
    return EXIT_OK


def cmd_requests_decide(args: argparse.Namespace) -> int:
    issuance = _issuance(args)
    with _closing(issuance.authority):
        if args.requests_cmd == "approve":
            request = issuance.approve(args.request_id, actor=args.actor)
            print(f"Approved {request.id} ({request.subject}): the agent gets its certificate "
                  "when it repeats the request.")
        else:
            request = issuance.reject(args.request_id, reason=args.reason, actor=args.actor)
            print(f"Rejected {request.id} ({request.subject}).")
    return EXIT_OK


# --- audit -------------------------------------------------------------------------------------


def cmd_audit_list(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        entries = auth.audit_entries(args.tenant)
    rows = [_as_dict(e) for e in entries]
    _emit(
        args,
        rows,
        lambda: _table(
            ["SEQ", "TIME", "ACTOR", "TENANT", "ACTION", "TARGET", "REASON"],
            [
                [str(e.seq), _when(e.ts), e.actor, e.tenant or "-", e.action, e.target or "-",
                 e.reason or "-"]
                for e in entries
            ],
        ),
    )
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    with _closing(_authority(args)) as auth:
        result = auth.verify_audit()
    if result.ok:
        print(f"audit log intact: {result.entries_checked} entries, hash chain verified; "
              f"head {result.head_hash}")
        return EXIT_OK
    raise CliExit(EXIT_REFUSED, f"audit_tampered: {result.problem}")


# --- plumbing ----------------------------------------------------------------------------------


class _closing:
    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    def __enter__(self) -> Authority:
        return self.authority

    def __exit__(self, *exc: object) -> None:
        self.authority.close()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default=argparse.SUPPRESS,
        help="config file (default: $SWITCH_CONFIG or ./switch.toml)",
    )
    common.add_argument(
        "--actor", default=argparse.SUPPRESS,
        help="who is acting, for the audit log (default: the OS user)",
    )
    common.add_argument(
        "--log-format", choices=FORMATS, default=argparse.SUPPRESS,
        help=f"log lines on stderr as logfmt (the default), json or console "
             f"(default: ${FORMAT_ENV} or logfmt)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    parser = argparse.ArgumentParser(
        prog="switch", parents=[common],
        description="Switch: a mutual-TLS gateway for endpoint agents, with its own enrollment.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        parent: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=help_, description=help_, parents=[common, *parents]
        )
        p.set_defaults(func=func)
        return p

    p = add(sub, "init", cmd_init, "write a ready deployment with a dev PKI and tenant 'demo'")
    p.add_argument("directory", help="where to create it (must not hold a deployment already)")
    p.add_argument("--keystore", action="store_true",
                   help="put the server certificate in a PKCS#12 keystore with a password file")

    p = add(sub, "agent", cmd_agent,
            "the reference agent: enroll, renew, connect, try certificates in turn, reconnect")
    p.add_argument("--dir", required=True, help="the agent's own directory (certificates, keys)")
    p.add_argument("--server-name", required=True, help="the tenant's hostname (SNI and Host)")
    p.add_argument("--gateway", required=True, type=_host_port, help="HOST:PORT of the gateway")
    p.add_argument("--enroll", type=_host_port, help="HOST:PORT of the enrollment port")
    p.add_argument("--ca-file", help="CA certificate(s) to authenticate the server")
    p.add_argument("--pin", help="SHA-256 (hex) of the server's public key, instead of or with a CA")
    p.add_argument("--key-file", help="file holding the provisioning key "
                   "(or $SWITCH_PROVISIONING_KEY); never pass the key itself as an argument")
    p.add_argument("--name", help="the common name to enroll with")
    p.add_argument("--path", default="/", help="WebSocket path and query (default /)")
    p.add_argument("--renew-before", help="renew this long before expiry (default: the window "
                   "the enrollment port names, else a third of the certificate's lifetime)")
    p.add_argument("--once", metavar="MESSAGE", help="send one message, print the reply, exit")

    p = add(sub, "echo", cmd_echo,
            "a WebSocket echo upstream for trying Switch out, load tests and benchmarks (no TLS)")
    p.add_argument("--listen", type=_host_port, default=("127.0.0.1", 8080),
                   help="HOST:PORT to listen on (default 127.0.0.1:8080, the dev config's upstream)")

    p = add(sub, "loadtest", cmd_loadtest,
            "simulate N agents against a running Switch: enroll, connect, hold, report")
    p.add_argument("--agents", type=int, default=100, help="simulated agents (default 100)")
    p.add_argument("--processes", type=int, default=None,
                   help="load generator processes (default: the number of cores)")
    p.add_argument("--tenant", help="the tenant (default: the config's only or default tenant)")
    p.add_argument("--server-name", help="SNI and Host (default: the tenant's first hostname)")
    p.add_argument("--gateway", type=_host_port, help="HOST:PORT (default: from the config)")
    p.add_argument("--enroll", type=_host_port, help="HOST:PORT (default: from the config)")
    p.add_argument("--ca-file", help="CA certificate(s) to authenticate the server "
                   "(default: pin the config's server certificate)")
    p.add_argument("--pin", help="SHA-256 (hex) of the server's public key")
    p.add_argument("--key-file", help="file holding the provisioning key (or $SWITCH_PROVISIONING_KEY)")
    p.add_argument("--path", default="/", help="WebSocket path and query (default /)")
    p.add_argument("--connect-rate", type=float, default=200.0,
                   help="new sessions per second, in all (default 200; 0: as fast as possible)")
    p.add_argument("--enroll-concurrency", type=int, default=16,
                   help="EST requests in flight, in all (default 16)")
    p.add_argument("--hold", default="10s", help="how long to hold the sessions (default 10s)")
    p.add_argument("--message-interval", default="5s",
                   help="each agent sends a message this often (default 5s; 0 sends none)")
    p.add_argument("--message-size", type=int, default=64, help="message bytes (default 64)")
    p.add_argument("--timeout", default="30s", help="limit on every network wait (default 30s)")
    p.add_argument("--key-type", default="ec-p256", help="agents' key type (default ec-p256)")
    p.add_argument("--tls", choices=("1.2", "1.3"), help="pin the sessions' TLS version")
    p.add_argument("--server-pid", type=int, action="append",
                   help="the server's pid, for memory and CPU (default: the config's pid file)")
    p.add_argument("--no-server-stats", action="store_true", help="do not read the server's /proc")
    p.add_argument("--max-failures", type=int, default=0,
                   help="exit 0 with up to this many failures (default 0)")
    p.add_argument("--json", help="write the report as JSON to this file")
    p.add_argument("--png", help="write a chart (latency distribution, agents over time) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add(sub, "reload", cmd_reload,
            "make the running Switch re-read its config, CAs, CRLs and certificate")
    p.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the result")

    p = add(sub, "serve", cmd_serve,
            "run the gateway, enroll and admin listeners (SIGHUP reloads; SIGTERM drains and stops)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes sharing the ports (default: the number of cores "
                        "this process may run on; 1 runs in this process)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)

    cfg = sub.add_parser("config", help="check the configuration").add_subparsers(
        dest="config_cmd", required=True, metavar="SUBCOMMAND")
    add(cfg, "check", cmd_config_check, "report every error and risky setting in the config")

    keys = sub.add_parser("keys", help="manage provisioning keys").add_subparsers(
        dest="keys_cmd", required=True, metavar="SUBCOMMAND")
    p = add(keys, "generate", cmd_keys_generate, "create a key and print its secret once", [as_json])
    p.add_argument("tenant")
    p.add_argument("name")
    p.add_argument("--profile", help="certificate profile for this key (default: the tenant's)")
    p = add(keys, "list", cmd_keys_list, "list a tenant's keys (never their secrets)", [as_json])
    p.add_argument("tenant")
    p = add(keys, "rename", cmd_keys_rename, "rename a key")
    p.add_argument("tenant")
    p.add_argument("name")
    p.add_argument("new_name")
    p = add(keys, "suspend", cmd_keys_suspend, "stop a key issuing certificates (reversible)")
    p.add_argument("tenant")
    p.add_argument("name")
    p.add_argument("--reason", help="why (required, recorded in the audit log)")
    p = add(keys, "reactivate", cmd_keys_reactivate, "make a suspended key active again")
    p.add_argument("tenant")
    p.add_argument("name")
    p = add(keys, "revoke", cmd_keys_revoke,
            "revoke a key for good: its certificates stop connecting")
    p.add_argument("tenant")
    p.add_argument("name")
    p.add_argument("--reason", help="why (required, recorded in the audit log)")
    p.add_argument("--confirm", metavar="NAME",
                   help="the key name typed again, case-sensitive (required)")

    svc = sub.add_parser("service", help="the provisioning service toggle").add_subparsers(
        dest="service_cmd", required=True, metavar="SUBCOMMAND")
    for name, help_ in (
        ("enable", "enable provisioning for a tenant (creates its issuer the first time)"),
        ("disable", "disable provisioning: stops enrollment and trust in the provisioning CA"),
        ("status", "show whether provisioning is enabled"),
    ):
        p = add(svc, name, cmd_service, help_, [as_json] if name == "status" else [])
        p.add_argument("tenant")

    ca = sub.add_parser("ca", help="the tenants' provisioning issuers").add_subparsers(
        dest="ca_cmd", required=True, metavar="SUBCOMMAND")
    p = add(ca, "show", cmd_ca_show, "the provisioning service's state, the tenant's issuers, "
            "their validity and whether the gateway trusts them", [as_json])
    p.add_argument("tenant")
    p.add_argument("--pem", action="store_true",
                   help="print the certificates of the issuers the gateway trusts now")
    p = add(ca, "renew", cmd_ca_renew, "add a new issuer; older ones stay trusted while needed")
    p.add_argument("tenant")

    certs = sub.add_parser("certs", help="issued certificates").add_subparsers(
        dest="certs_cmd", required=True, metavar="SUBCOMMAND")
    p = add(certs, "list", cmd_certs_list, "list a tenant's issued certificates", [as_json])
    p.add_argument("tenant")
    p.add_argument("--key", help="only those issued through this provisioning key (name or id)")
    p = add(certs, "revoke", cmd_certs_revoke,
            "revoke one certificate: it stops connecting and cannot renew")
    p.add_argument("serial", help="the serial number in hex, as `certs list` shows it")
    p.add_argument("--reason", help="why (required, recorded in the audit log)")
    p.add_argument("--tenant", help="the tenant, when a serial is not unique")

    reqs = sub.add_parser("requests", help="enrollment requests waiting for approval").add_subparsers(
        dest="requests_cmd", required=True, metavar="SUBCOMMAND")
    p = add(reqs, "list", cmd_requests_list, "list pending requests", [as_json])
    p.add_argument("--tenant", help="only this tenant's requests")
    p.add_argument("--all", action="store_true", help="include decided requests")
    p = add(reqs, "approve", cmd_requests_decide, "approve a pending request")
    p.add_argument("request_id")
    p = add(reqs, "reject", cmd_requests_decide, "reject a pending request")
    p.add_argument("request_id")
    p.add_argument("--reason", help="why (required, recorded in the audit log)")

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_cmd", required=True, metavar="SUBCOMMAND")
    p = add(audit, "list", cmd_audit_list, "list audit entries", [as_json])
    p.add_argument("--tenant", help="only this tenant's entries")
    add(audit, "verify", cmd_audit_verify, "check the hash chain; names the first bad entry")
    return parser


def _fail(code: int, message: str) -> NoReturn:
    print(f"switch: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = _default_config()
    if not hasattr(args, "actor"):
        args.actor = _default_actor()
    log_format = getattr(args, "log_format", None) or os.environ.get(FORMAT_ENV) or "logfmt"
    if log_format not in FORMATS:
        _fail(EXIT_USAGE, f"usage: ${FORMAT_ENV} must be one of {', '.join(FORMATS)}")
    os.environ[FORMAT_ENV] = log_format  # the worker processes of `serve --workers` inherit it
    configure_logging(log_format)
    try:
        code: int = args.func(args)
    except CliExit as exc:
        _fail(exc.code, exc.message)
    except EnrollError as exc:
        _fail(exit_code(exc.reason), f"{exc.reason}: {exc.message}")
    except BrokenPipeError:
        return EXIT_OK
    return code


if __name__ == "__main__":
    raise SystemExit(main())
