"""``switch operators``: the people who use the admin API and console, managed on the store
itself (the bootstrap path: there is no API for it), each change audited as ``local:<OS user>``.

A token is printed once, when it is made (``add``, ``reset-token``): only its hash is kept. A
password is never an argument (it would show in ``ps`` and shell history): ``set-password``
prompts twice without echo, or reads ``--password-file``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.common import load, now
from gateway.cli.exits import EXIT_OK, CliExit
from gateway.cli.output import emit, table, when

if TYPE_CHECKING:  # enroll is imported when a command runs
    from enroll.operator_admin import OperatorAdmin
    from enroll.operators import OperatorRecord


@contextlib.contextmanager
def _operators(args: argparse.Namespace) -> Iterator[OperatorAdmin]:
    from enroll.authority import Authority
    from enroll.operator_admin import OperatorAdmin

    authority = Authority.open(load(args))
    try:
        yield OperatorAdmin(authority)
    finally:
        authority.close()


def operator_json(record: OperatorRecord) -> dict[str, Any]:
    return {"name": record.name, "role": record.role,
            "tenants": list(record.tenants) if record.tenants is not None else None,
            "token_id": record.token_id, "console_password": record.password_hash is not None,
            "created_at": record.created_at, "updated_at": record.updated_at}


def _tenants_text(record: OperatorRecord) -> str:
    return "all" if record.tenants is None else ",".join(record.tenants)


def _token_text(record: OperatorRecord, token: str, what: str) -> str:
    return (f"{what} operator {record.name} ({record.role}, tenants: {_tenants_text(record)}).\n"
            "API token — shown once, it cannot be shown again; store it now (a file only its "
            "owner reads, for --token-file):\n\n"
            f"    {token}\n")


def cmd_operators_add(args: argparse.Namespace) -> int:
    with _operators(args) as operators:
        record, token = operators.add(args.name, role=args.role, tenants=args.tenant,
                                      actor=args.actor, now=now())
    emit(args, {**operator_json(record), "token": token},
         lambda: _token_text(record, token, "Added"))
    return EXIT_OK


def cmd_operators_list(args: argparse.Namespace) -> int:
    with _operators(args) as operators:
        records = operators.list()
    emit(args, [operator_json(r) for r in records], lambda: table(
        ["NAME", "ROLE", "TENANTS", "TOKEN ID", "PASSWORD", "UPDATED"],
        [[r.name, r.role, _tenants_text(r), r.token_id,
          "yes" if r.password_hash else "no", when(r.updated_at)] for r in records]))
    return EXIT_OK


def cmd_operators_show(args: argparse.Namespace) -> int:
    with _operators(args) as operators:
        record = operators.get(args.name)
    emit(args, operator_json(record), lambda: "\n".join(
        f"{k}: {v}" for k, v in (("name", record.name), ("role", record.role),
                                 ("tenants", _tenants_text(record)),
                                 ("token id", record.token_id),
                                 ("console password", "yes" if record.password_hash else "no"),
                                 ("created", when(record.created_at)),
                                 ("updated", when(record.updated_at)))))
    return EXIT_OK


def cmd_operators_remove(args: argparse.Namespace) -> int:
    with _operators(args) as operators:
        operators.remove(args.name, actor=args.actor, now=now())
    print(f"Removed operator {args.name}: its token and password no longer work.")
    return EXIT_OK


def cmd_operators_set_role(args: argparse.Namespace) -> int:
    with _operators(args) as operators:
        record = operators.set_role(args.name, args.role, actor=args.actor, now=now())
    print(f"Operator {record.name} now has role {record.role}.")
    return EXIT_OK


def cmd_operators_set_tenants(args: argparse.Namespace) -> int:
    if bool(args.tenant) == args.all_tenants:
        raise CliExit("usage", "give --tenant T (repeatable) or --all-tenants")
    with _operators(args) as operators:
        record = operators.set_tenants(args.name, None if args.all_tenants else args.tenant,
                                       actor=args.actor, now=now())
    print(f"Operator {record.name} now acts on tenants: {_tenants_text(record)}.")
    return EXIT_OK


def cmd_operators_reset_token(args: argparse.Namespace) -> int:
    with _operators(args) as operators:
        record, token = operators.reset_token(args.name, actor=args.actor, now=now())
    emit(args, {**operator_json(record), "token": token},
         lambda: _token_text(record, token, "New token for") + "The old token no longer works.")
    return EXIT_OK


def _password(args: argparse.Namespace) -> str | None:
    if args.clear:
        return None
    if args.password_file:
        try:
            return Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliExit("usage", f"cannot read {args.password_file}: {exc}") from exc
    if not sys.stdin.isatty():
        raise CliExit("usage", "no terminal to ask for the password: use --password-file FILE")
    first = getpass.getpass(f"Console password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        raise CliExit("usage", "the two passwords differ; nothing was changed")
    return first


def cmd_operators_set_password(args: argparse.Namespace) -> int:
    password = _password(args)
    with _operators(args) as operators:
        record = operators.set_password(args.name, password, actor=args.actor, now=now())
    print(f"Console password of {record.name} "
          f"{'removed' if password is None else 'set'}.")
    return EXIT_OK


def add_operator_commands(sub: Any, add: Any, as_json: argparse.ArgumentParser) -> None:
    """The ``operators`` subcommands, on the parser's ``add`` helper."""
    ops = sub.add_parser("operators", help="the people who use the admin API and console "
                         "(on the store: the bootstrap path)").add_subparsers(
        dest="operators_cmd", required=True, metavar="SUBCOMMAND")
    roles = ("security-read", "security-admin")
    p = add(ops, "add", cmd_operators_add, "add an operator and print its API token once",
            [as_json])
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=roles)
    p.add_argument("--tenant", action="append", help="a tenant it may act on (repeatable; "
                   "default: every tenant)")
    add(ops, "list", cmd_operators_list, "list operators (never their tokens)", [as_json])
    p = add(ops, "show", cmd_operators_show, "show one operator", [as_json])
    p.add_argument("name")
    p = add(ops, "remove", cmd_operators_remove, "remove an operator: its token stops working")
    p.add_argument("name")
    p = add(ops, "set-role", cmd_operators_set_role, "change an operator's role")
    p.add_argument("name")
    p.add_argument("role", choices=roles)
    p = add(ops, "set-tenants", cmd_operators_set_tenants, "change the tenants it may act on")
    p.add_argument("name")
    p.add_argument("--tenant", action="append", help="a tenant (repeatable)")
    p.add_argument("--all-tenants", action="store_true", help="every tenant")
    p = add(ops, "reset-token", cmd_operators_reset_token,
            "replace an operator's API token (printed once; the old one stops working)",
            [as_json])
    p.add_argument("name")
    p = add(ops, "set-password", cmd_operators_set_password,
            "set the console password (prompted twice without echo, or --password-file)")
    p.add_argument("name")
    p.add_argument("--password-file", help="read the password from this file (one line)")
    p.add_argument("--clear", action="store_true", help="remove the console password")
