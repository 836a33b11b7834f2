"""The security admin's commands: ``keys``, ``service``, ``ca``, ``certs``, ``requests`` and
``audit``. Each asks a backend (``admin_backend``) to act, then prints the result
(``admin_views``); refusals are enroll's errors and exit through ``main``."""

from __future__ import annotations

import argparse
import sys

from gateway.cli import admin_views as views
from gateway.cli.admin_backend import open_backend
from gateway.cli.exits import EXIT_OK, CliExit
from gateway.cli.output import emit

# --- provisioning keys -------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        record, secret = backend.generate_key(args.tenant, args.name, actor=args.actor,
                                              profile=args.profile)
    emit(args, views.generated_key_json(record, secret),
         lambda: views.generated_key_text(record, secret))
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        keys = backend.list_keys(args.tenant)
    emit(args, [views.key_json(k) for k in keys], lambda: views.keys_text(keys))
    return EXIT_OK


def cmd_keys_rename(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        backend.rename_key(args.tenant, args.name, args.new_name, actor=args.actor)
    print(views.renamed_text(args.tenant, args.name, args.new_name))
    return EXIT_OK


def cmd_keys_suspend(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        backend.suspend_key(args.tenant, args.name, reason=args.reason or "", actor=args.actor)
    print(views.suspended_text(args.tenant, args.name))
    return EXIT_OK


def cmd_keys_reactivate(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        backend.reactivate_key(args.tenant, args.name, actor=args.actor)
    print(views.reactivated_text(args.tenant, args.name))
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        backend.revoke_key(args.tenant, args.name, reason=args.reason or "",
                           confirm=args.confirm or "", actor=args.actor)
    print(views.key_revoked_text(args.tenant, args.name))
    return EXIT_OK


# --- the provisioning service and its issuers -------------------------------------------------


def cmd_service(args: argparse.Namespace) -> int:
    if args.service_cmd == "disable" and not args.yes:
        raise CliExit("acknowledgement_required", f"disabling stops enrollment for tenant "
                      f"{args.tenant} and the gateway's trust in its provisioned certificates: "
                      "add --yes if you understand the impact and want to proceed")
    with open_backend(args) as backend:
        if args.service_cmd == "enable":
            backend.enable_service(args.tenant, actor=args.actor)
            print(views.service_enabled_text(args.tenant))
        elif args.service_cmd == "disable":
            backend.disable_service(args.tenant, actor=args.actor)
            print(views.service_disabled_text(args.tenant))
        else:
            enabled = backend.service_enabled(args.tenant)
            emit(args, views.service_status_json(args.tenant, enabled),
                 lambda: views.service_status_text(args.tenant, enabled))
    return EXIT_OK


def cmd_ca_show(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        issuers = backend.list_issuers(args.tenant)
        enabled = backend.service_enabled(args.tenant)
    if args.pem:
        warning = views.ca_pem_warning(args.tenant, enabled, issuers)
        if warning:
            print(warning, file=sys.stderr)
        sys.stdout.write(views.trusted_pem(enabled, issuers))
        return EXIT_OK
    emit(args, views.ca_json(args.tenant, enabled, issuers),
         lambda: views.ca_text(args.tenant, enabled, issuers))
    return EXIT_OK


def cmd_ca_renew(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        issuer = backend.renew_issuer(args.tenant, actor=args.actor)
    print(views.issuer_renewed_text(args.tenant, issuer))
    return EXIT_OK


# --- issued certificates and requests waiting for approval ------------------------------------


def cmd_certs_list(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        records = backend.list_certificates(args.tenant, key=args.key)
    emit(args, views.certificates_json(records), lambda: views.certificates_text(records))
    return EXIT_OK


def cmd_certs_revoke(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        record = backend.revoke_certificate(args.serial, reason=args.reason, actor=args.actor,
                                            tenant=args.tenant)
    print(views.certificate_revoked_text(record))
    return EXIT_OK


def cmd_requests_list(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        requests = backend.list_requests(args.tenant, state=None if args.all else "pending")
    emit(args, views.requests_json(requests), lambda: views.requests_text(requests))
    return EXIT_OK


def cmd_requests_decide(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        if args.requests_cmd == "approve":
            request = backend.approve_request(args.request_id, actor=args.actor)
            print(views.approved_text(request))
        else:
            request = backend.reject_request(args.request_id, reason=args.reason,
                                             actor=args.actor)
            print(views.rejected_text(request))
    return EXIT_OK


# --- the audit log -----------------------------------------------------------------------------


def cmd_audit_list(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        entries = backend.audit_entries(args.tenant)
    emit(args, views.audit_json(entries), lambda: views.audit_text(entries))
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        result = backend.verify_audit()
    if result.ok:
        print(views.audit_intact_text(result))
        return EXIT_OK
    raise CliExit("audit_tampered", str(result.problem))
