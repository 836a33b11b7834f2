"""``switch init DIR``: a ready deployment for development and first use.

Writes a commented ``switch.toml``, a dev PKI (a root CA that signs the server certificate, and a
separate CA standing for the demo organisation's own PKI with one agent certificate), and the
state directory with an empty store (SQLite) and the marker that makes a missing store an error
from then on (``enroll.store.presence``). Never overwrites: if the config or the PKI directory exists, nothing is written.
The dev PKI is for trying Switch out; production deployments bring their own server certificate.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from config.load import HOSTNAME, TENANT_NAME
from enroll import pki
from enroll.store import open_sqlite

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)
AGENT_VALIDITY = dt.timedelta(days=365)

_CONFIG = """\
# Switch configuration, written by `switch init` on {date}.
# Check it with `switch config check`; the keys are described in docs/configuration.md.

# SQLite store and issuer keys (mode 0700). Back it up.
state_dir = "state"

# Durations take ms, s, m, h, d ("500ms", "1h30m"); sizes take KiB, MiB ("64KiB").

[tls]
# The server certificate agents see on every port. The dev PKI in pki/ is for trying Switch out:
# put your own certificate here for production.
{tls}

[gateway]
# Agents' WebSocket sessions over mutual TLS; a client certificate is required.
listen = "0.0.0.0:4000"
enabled = true
handshake_timeout = "10s"
request_timeout = "10s"
idle_timeout = "300s"
upstream_connect_timeout = "10s"
close_timeout = "5s"
drain_timeout = "10s"
ping_interval = "30s"
max_connections = 20000
max_message_size = "1MiB"
max_handshakes_per_source = 500       # one address's connections still in their TLS handshake
first_byte_timeout = "5s"             # a connection silent this long after accept is closed

[enroll]
# EST (RFC 7030) enrollment: agents get certificates here with a provisioning key.
listen = "0.0.0.0:9443"
enabled = true
request_timeout = "10s"
idle_timeout = "30s"                  # a connection silent this long after the handshake is closed
max_body_size = "64KiB"
max_connections = 1000
max_handshakes_per_source = 50
first_byte_timeout = "5s"

[admin]
# /healthz, /readyz and /metrics, without TLS or authentication: keep it on loopback.
listen = "127.0.0.1:9090"
enabled = true

[api]
# The admin API and console (HTTPS, server certificate above): operators authenticate with the
# token `switch operators add` prints. See docs/api.md.
listen = "127.0.0.1:9444"
enabled = true
# The security admin console at https://127.0.0.1:9444/ : operators sign in with the password
# `switch operators set-password NAME` sets. See docs/console.md.
console = true
session_idle_timeout = "30m"          # a console session unused this long ends
session_lifetime = "8h"               # a console session ends this long after sign-in

# Webhooks: signed JSON POSTs for events such as a request waiting for approval (docs/api.md).
# [[webhooks]]
# url = "https://hooks.example/switch"
# secret_file = "secrets/webhook.secret"
# events = ["request.pending", "key.revoked"]

# Certificate templates for the provisioning service. Tenants use "default" unless they name
# another profile.
[profiles.default]
validity = "30d"
renew_before = "7d"
key_types = ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
approval = "auto"                     # "manual": an admin approves each request

# A tenant is chosen by the TLS SNI name agents connect with. Tenants may also live in their
# own files: set tenants_dir = "tenants.d" above and write tenants.d/NAME.toml.
[tenants.{tenant}]
hostnames = [{hostnames}]
# The organisation's own CAs: certificates they issue connect (identity rule below).
organisation_cas = ["pki/{tenant}-org-ca.pem"]
organisation_crls = []
# Single client certificates trusted one by one: PEM files of leaves, or "sha256:..." fingerprints.
organisation_certs = []
identity = {{ rule = "email-san", allow = ["*@{first_host}"] }}
upstream = "ws://127.0.0.1:8080/"
profile = "default"
"""


def init_deployment(
    directory: Path, *, now: dt.datetime, keystore: bool = False, tenant: str = "demo",
    hostnames: Sequence[str] = ("demo.switch.test",),
) -> Path:
    """Write a deployment into ``directory`` and return the config path.

    Raises ``FileExistsError`` (writing nothing) if ``switch.toml`` or ``pki/`` is there already,
    and ``ValueError`` (writing nothing) for a tenant name or hostname the config would refuse.
    ``localhost`` is always added to the tenant's hostnames.
    """
    _check_names(tenant, hostnames)
    directory = directory.resolve()
    config_path = directory / "switch.toml"
    pki_dir = directory / "pki"
    for existing in (config_path, pki_dir):
        if existing.exists() or existing.is_symlink():
            raise FileExistsError(f"{existing} already exists; refusing to overwrite a deployment")
    directory.mkdir(parents=True, exist_ok=True)
    pki_dir.mkdir(mode=0o700)
    (directory / "state").mkdir(mode=0o700, exist_ok=True)

    root_key = pki.generate_key("ec-p256")
    root = pki.make_ca(pki.name("Switch dev root CA", "Switch dev"), root_key, now=now,
                       validity=CA_VALIDITY, path_length=0)
    (pki_dir / "dev-root-ca.pem").write_bytes(pki.cert_pem(root))
    pki.write_private(pki_dir / "dev-root-ca.key", pki.key_pem(root_key))

    server_key = pki.generate_key("ec-p256")
    all_hosts = list(dict.fromkeys(h.lower().rstrip(".") for h in [*hostnames, "localhost"]))
    server = pki.make_leaf(
        pki.name(all_hosts[0], "Switch dev"), server_key.public_key(),
        (root, root_key), now=now, validity=SERVER_VALIDITY, dns_names=all_hosts,
        ip_addresses=["127.0.0.1", "::1"], server=True, client=False,
    )
    if keystore:
        password = secrets.token_urlsafe(24)
        pki.write_private(pki_dir / "server.pass", (password + "\n").encode())
        p12 = pkcs12.serialize_key_and_certificates(
            b"switch-server", server_key, server, [root],
            serialization.BestAvailableEncryption(password.encode()),
        )
        pki.write_private(pki_dir / "server.p12", p12)
        tls = 'keystore = "pki/server.p12"\nkeystore_password_file = "pki/server.pass"'
    else:
        (pki_dir / "server.pem").write_bytes(pki.cert_pem(server) + pki.cert_pem(root))
        pki.write_private(pki_dir / "server.key", pki.key_pem(server_key))
        tls = 'cert_file = "pki/server.pem"\nkey_file = "pki/server.key"'

    org_key = pki.generate_key("ec-p256")
    org = pki.make_ca(pki.name(f"{tenant} organisation CA (dev)", tenant), org_key, now=now,
                      validity=CA_VALIDITY, path_length=0)
    (pki_dir / f"{tenant}-org-ca.pem").write_bytes(pki.cert_pem(org))
    pki.write_private(pki_dir / f"{tenant}-org-ca.key", pki.key_pem(org_key))
    agent_key = pki.generate_key("ec-p256")
    agent = pki.make_leaf(
        pki.name("agent1", tenant), agent_key.public_key(), (org, org_key), now=now,
        validity=AGENT_VALIDITY, emails=[f"agent1@{all_hosts[0]}"], client=True,
    )
    (pki_dir / f"{tenant}-agent.pem").write_bytes(pki.cert_pem(agent))
    pki.write_private(pki_dir / f"{tenant}-agent.key", pki.key_pem(agent_key))

    text = _CONFIG.format(
        date=now.strftime("%Y-%m-%d"), tls=tls, tenant=tenant,
        hostnames=", ".join(f'"{h}"' for h in all_hosts), first_host=all_hosts[0],
    )
    with config_path.open("x", encoding="utf-8") as f:  # "x": never replace a config
        f.write(text)
    # The deployment's store, empty: from now on a missing one is an error (enroll.store.presence).
    open_sqlite(directory / "state" / "switch.db", create=True).close()
    return config_path


def _check_names(tenant: str, hostnames: Sequence[str]) -> None:
    """Refuse (ValueError, before anything is written) names the config would not load with."""
    if not TENANT_NAME.fullmatch(tenant):
        raise ValueError(f"bad tenant name {tenant!r}: 1-63 lower-case letters, digits and '-', "
                         "starting with a letter or digit")
    if isinstance(hostnames, str) or not hostnames:
        raise ValueError("at least one tenant hostname is needed")
    for host in hostnames:
        if not HOSTNAME.fullmatch(host.lower().rstrip(".")):
            raise ValueError(f"{host!r} is not a valid DNS name")
