"""``switch init DIR``: a ready deployment for development and first use.

Writes a commented ``switch.toml``, a dev PKI (a root CA that signs the server certificate, and a
separate CA standing for the demo organisation's own PKI with one agent certificate), and the
state directory. Never overwrites: if the config or the PKI directory exists, nothing is written.
The dev PKI is for trying Switch out; production deployments bring their own server certificate.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from enroll import pki

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)
AGENT_VALIDITY = dt.timedelta(days=365)

_CONFIG = """\
# Switch configuration, written by `switch init` on {date}.
# Check it with `switch config check`; the keys are described in docs/configuration.md.

# SQLite store and issuer keys (mode 0700). Back it up.
state_dir = "state"

[tls]
# The server certificate agents see on every port. The dev PKI in pki/ is for trying Switch out:
# put your own certificate here for production.
{tls}

[gateway]
# Agents' WebSocket sessions over mutual TLS.
listen = "0.0.0.0:4000"
handshake_timeout = "10s"
max_connections = 20000

[enroll]
# EST (RFC 7030) enrollment: agents get certificates here with a provisioning key.
listen = "0.0.0.0:9443"
request_timeout = "10s"
max_body_size = "64KiB"

[admin]
# /healthz, /readyz and /metrics, without TLS: keep it on loopback.
listen = "127.0.0.1:9090"

[profiles.default]
validity = "30d"
renew_before = "7d"
key_types = ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
approval = "auto"

[tenants.{tenant}]
hostnames = [{hostnames}]
# The organisation's own CAs: certificates they issue connect (identity rule below).
organisation_cas = ["pki/{tenant}-org-ca.pem"]
organisation_crls = []
identity = {{ rule = "email-san", allow = ["*@{first_host}"] }}
upstream = "ws://127.0.0.1:8080/"
profile = "default"
"""


def init_deployment(
    directory: Path, *, now: dt.datetime, keystore: bool = False, tenant: str = "demo",
    hostnames: Sequence[str] = ("demo.switch.test",),
) -> Path:
    """Write a deployment into ``directory`` and return the config path. Raises
    ``FileExistsError`` (writing nothing) if one is there already."""
    directory = directory.resolve()
    config_path = directory / "switch.toml"
    pki_dir = directory / "pki"
    for existing in (config_path, pki_dir):
        if existing.exists():
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
    all_hosts = [*hostnames, "localhost"]
    server = pki.make_leaf(
        pki.name(hostnames[0] if hostnames else "localhost", "Switch dev"), server_key.public_key(),
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
        validity=AGENT_VALIDITY, emails=[f"agent1@{hostnames[0]}"], client=True,
    )
    (pki_dir / f"{tenant}-agent.pem").write_bytes(pki.cert_pem(agent))
    pki.write_private(pki_dir / f"{tenant}-agent.key", pki.key_pem(agent_key))

    config_path.write_text(_CONFIG.format(
        date=now.strftime("%Y-%m-%d"), tls=tls, tenant=tenant,
        hostnames=", ".join(f'"{h}"' for h in all_hosts), first_host=hostnames[0],
    ))
    return config_path
