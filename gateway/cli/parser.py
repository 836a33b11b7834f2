"""The ``switch`` command's parser: its commands, their options and the options common to all
(``-c``, ``--log-format``), and to the admin commands (``--server``, ``--token-file``,
``--ca-file``); each command's function is ``args.func``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from gateway.cli.admin_commands import (
    cmd_audit_list,
    cmd_audit_verify,
    cmd_ca_renew,
    cmd_ca_show,
    cmd_certs_list,
    cmd_certs_revoke,
    cmd_keys_generate,
    cmd_keys_list,
    cmd_keys_reactivate,
    cmd_keys_rename,
    cmd_keys_revoke,
    cmd_keys_suspend,
    cmd_requests_decide,
    cmd_requests_list,
    cmd_service,
)
from gateway.cli.operator_commands import add_operator_commands
from gateway.cli.server import cmd_config_check, cmd_init, cmd_reload, cmd_serve
from gateway.cli.store_commands import cmd_backup, cmd_restore, cmd_store_copy, cmd_store_migrate
from gateway.cli.tools import cmd_agent, cmd_echo, cmd_loadtest, duration, host_port
from gateway.logs import FORMAT_ENV, FORMATS


def version() -> str:
    """The installed package's version (``switch --version``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("mtls-switch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default=argparse.SUPPRESS,
        help="config file (default: $SWITCH_CONFIG or ./switch.toml)",
    )
    common.add_argument(
        "--log-format", choices=FORMATS, default=argparse.SUPPRESS,
        help=f"log lines on stderr as logfmt (the default), json or console "
             f"(default: ${FORMAT_ENV} or logfmt)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--server", metavar="URL", help="act through this Switch's admin API "
                        "(https://HOST:9444) instead of the store (default: $SWITCH_SERVER); "
                        "the audit log then names the token's operator")
    remote.add_argument("--token-file", help="file holding the operator's API token "
                        "(default: $SWITCH_TOKEN_FILE); never pass the token itself")
    remote.add_argument("--ca-file", help="CA certificate(s) the server's certificate must "
                        "chain to (default: the system's)")

    parser = argparse.ArgumentParser(
        prog="switch", parents=[common],
        description="Switch: a mutual-TLS gateway for endpoint agents, with its own enrollment.",
    )
    parser.add_argument("--version", action="version", version=f"switch {version()}")
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
    p.add_argument("--gateway", required=True, type=host_port, help="HOST:PORT of the gateway")
    p.add_argument("--enroll", type=host_port, help="HOST:PORT of the enrollment port")
    p.add_argument("--ca-file", help="CA certificate(s) to authenticate the server")
    p.add_argument("--pin", help="SHA-256 (hex) of the server's public key, instead of or with a CA")
    p.add_argument("--key-file", help="file holding the provisioning key "
                   "(or $SWITCH_PROVISIONING_KEY); never pass the key itself as an argument")
    p.add_argument("--name", help="the common name to enroll with")
    p.add_argument("--path", default="/", help="WebSocket path and query (default /)")
    p.add_argument("--renew-before", type=duration, help="renew this long before expiry (default: the window "
                   "the enrollment port names, else a third of the certificate's lifetime)")
    p.add_argument("--once", metavar="MESSAGE", help="send one message, print the reply, exit")

    p = add(sub, "echo", cmd_echo,
            "a WebSocket echo upstream for trying Switch out, load tests and benchmarks (no TLS)")
    p.add_argument("--listen", type=host_port, default=("127.0.0.1", 8080),
                   help="HOST:PORT to listen on (default 127.0.0.1:8080, the dev config's upstream)")
    p.add_argument("--reuse-port", action="store_true",
                   help="share the port with other `switch echo --reuse-port` processes "
                        "(SO_REUSEPORT: the kernel spreads connections over them)")

    p = add(sub, "loadtest", cmd_loadtest,
            "simulate N agents against a running Switch: enroll, connect, hold, report")
    p.add_argument("--agents", type=int, default=100, help="simulated agents (default 100)")
    p.add_argument("--processes", type=int, default=None,
                   help="load generator processes (default: the number of cores)")
    p.add_argument("--tenant", help="the tenant (default: the config's only or default tenant)")
    p.add_argument("--server-name", help="SNI and Host (default: the tenant's first hostname)")
    p.add_argument("--gateway", type=host_port, help="HOST:PORT (default: from the config)")
    p.add_argument("--enroll", type=host_port, help="HOST:PORT (default: from the config)")
    p.add_argument("--source-address", action="append", metavar="IP",
                   help="a local address to open sessions from; repeat it to spread the agents "
                        "over several, round robin (one address reaches one gateway port at "
                        "most ip_local_port_range times; default: the kernel chooses)")
    p.add_argument("--ca-file", help="CA certificate(s) to authenticate the server "
                   "(default: pin the config's server certificate)")
    p.add_argument("--pin", help="SHA-256 (hex) of the server's public key")
    p.add_argument("--key-file", help="file holding the provisioning key (or $SWITCH_PROVISIONING_KEY)")
    p.add_argument("--path", default="/", help="WebSocket path and query (default /)")
    p.add_argument("--connect-rate", type=float, default=200.0,
                   help="new sessions per second, in all (default 200; 0: as fast as possible)")
    p.add_argument("--connect-concurrency", type=int, default=0,
                   help="sessions being opened at once, in all (default 0: no limit; "
                        "--connect-rate alone paces)")
    p.add_argument("--enroll-concurrency", type=int, default=16,
                   help="EST requests in flight, in all (default 16)")
    p.add_argument("--hold", type=duration, default="10s", help="how long to hold the sessions (default 10s)")
    p.add_argument("--message-interval", type=duration, default="5s",
                   help="each agent sends a message this often (default 5s; 0 sends none)")
    p.add_argument("--message-size", type=int, default=64, help="message bytes (default 64)")
    p.add_argument("--timeout", type=duration, default="30s", help="limit on every network wait (default 30s)")
    p.add_argument("--reconnect", action="store_true",
                   help="reopen a session the server ends (or that fails to open) with the "
                        "reference agent's jittered back-off, until the hold ends")
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
    p.add_argument("--create-store", action="store_true",
                   help="create an empty store where there is none (never for a deployment "
                        "that was initialised: restore its store instead)")

    p = add(sub, "backup", cmd_backup, "archive the SQLite store and its issuer keys, "
            "consistently, while Switch serves", [as_json])
    p.add_argument("file", help="the archive to write (replaced if it exists; mode 0600)")
    p = add(sub, "restore", cmd_restore,
            "put a backup's store and issuer keys in place (Switch stopped)", [as_json])
    p.add_argument("file", help="an archive written by switch backup")
    p.add_argument("--replace", action="store_true",
                   help="move the store there now aside (into STATE_DIR/replaced-TIME/) first")
    store = sub.add_parser("store", help="the store as a whole").add_subparsers(
        dest="store_cmd", required=True, metavar="SUBCOMMAND")
    add(store, "migrate", cmd_store_migrate,
        "bring the store's schema to this Switch's version (PostgreSQL: once, from one host)")
    p = add(store, "copy", cmd_store_copy, "copy this SQLite deployment into an empty "
            "PostgreSQL database, for several hosts (Switch stopped)")
    p.add_argument("--to", required=True, metavar="URL",
                   help="postgresql://USER@HOST:PORT/DATABASE (never with a password)")
    p.add_argument("--password-file", help="the database user's password")
    p.add_argument("--passphrase-file", required=True,
                   help="the issuer key passphrase every host will hold "
                        "([store] issuer_key_passphrase_file)")

    cfg = sub.add_parser("config", help="check the configuration").add_subparsers(
        dest="config_cmd", required=True, metavar="SUBCOMMAND")
    add(cfg, "check", cmd_config_check, "report every error and risky setting in the config")

    keys = sub.add_parser("keys", help="manage provisioning keys").add_subparsers(
        dest="keys_cmd", required=True, metavar="SUBCOMMAND")
    p = add(keys, "generate", cmd_keys_generate, "create a key and print its secret once", [as_json, remote])
    p.add_argument("tenant")
    p.add_argument("name")
    p.add_argument("--profile", help="certificate profile for this key (default: the tenant's)")
    p = add(keys, "list", cmd_keys_list, "list a tenant's keys (never their secrets)", [as_json, remote])
    p.add_argument("tenant")
    p = add(keys, "rename", cmd_keys_rename, "rename a key", [remote])
    p.add_argument("tenant")
    p.add_argument("name")
    p.add_argument("new_name")
    p = add(keys, "suspend", cmd_keys_suspend, "stop a key issuing certificates (reversible)", [remote])
    p.add_argument("tenant")
    p.add_argument("name")
    p.add_argument("--reason", help="why (required, recorded in the audit log)")
    p = add(keys, "reactivate", cmd_keys_reactivate, "make a suspended key active again", [remote])
    p.add_argument("tenant")
    p.add_argument("name")
    p = add(keys, "revoke", cmd_keys_revoke,
            "revoke a key for good: its certificates stop connecting", [remote])
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
        p = add(svc, name, cmd_service, help_, [as_json, remote] if name == "status" else [remote])
        p.add_argument("tenant")
        if name == "disable":
            p.add_argument("--yes", action="store_true", help="I understand the impact of this "
                           "action and want to proceed (required)")

    ca = sub.add_parser("ca", help="the tenants' provisioning issuers").add_subparsers(
        dest="ca_cmd", required=True, metavar="SUBCOMMAND")
    p = add(ca, "show", cmd_ca_show, "the provisioning service's state, the tenant's issuers, "
            "their validity and whether the gateway trusts them", [as_json, remote])
    p.add_argument("tenant")
    p.add_argument("--pem", action="store_true",
                   help="print the certificates of the issuers the gateway trusts now")
    p = add(ca, "renew", cmd_ca_renew, "add a new issuer; older ones stay trusted while needed", [remote])
    p.add_argument("tenant")

    certs = sub.add_parser("certs", help="issued certificates").add_subparsers(
        dest="certs_cmd", required=True, metavar="SUBCOMMAND")
    p = add(certs, "list", cmd_certs_list, "list a tenant's issued certificates", [as_json, remote])
    p.add_argument("tenant")
    p.add_argument("--key", help="only those issued through this provisioning key (name or id)")
    p = add(certs, "revoke", cmd_certs_revoke,
            "revoke one certificate: it stops connecting and cannot renew", [remote])
    p.add_argument("serial", help="the serial number in hex, as `certs list` shows it")
    p.add_argument("--reason", help="why (required, recorded in the audit log)")
    p.add_argument("--tenant", help="the tenant, when a serial is not unique")

    reqs = sub.add_parser("requests", help="enrollment requests waiting for approval").add_subparsers(
        dest="requests_cmd", required=True, metavar="SUBCOMMAND")
    p = add(reqs, "list", cmd_requests_list, "list pending requests", [as_json, remote])
    p.add_argument("--tenant", help="only this tenant's requests")
    p.add_argument("--all", action="store_true", help="include decided requests")
    p = add(reqs, "approve", cmd_requests_decide, "approve a pending request", [remote])
    p.add_argument("request_id")
    p = add(reqs, "reject", cmd_requests_decide, "reject a pending request", [remote])
    p.add_argument("request_id")
    p.add_argument("--reason", help="why (required, recorded in the audit log)")

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_cmd", required=True, metavar="SUBCOMMAND")
    p = add(audit, "list", cmd_audit_list, "list audit entries", [as_json, remote])
    p.add_argument("--tenant", help="only this tenant's entries")
    add(audit, "verify", cmd_audit_verify, "check the hash chain; names the first bad entry",
        [remote])
    add_operator_commands(sub, add, as_json)
    return parser
