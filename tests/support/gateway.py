"""A running Switch with an echo upstream, and agents that are not our code."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio
import trio_websocket
from cryptography import x509
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from config.load import load_config
from config.model import SwitchConfig
from enroll import pki
from enroll.authority import Authority
from gateway.client.est_client import EstClient, EstServer, make_csr
from gateway.serve import Switch
from tests.support.est import HOST, make_deployment

ACME_HOST = "acme.switch.test"
NOW = dt.datetime.now(dt.UTC)


@attrs.define
class Echo:
    """An upstream that echoes messages and records each upgrade's headers and close codes."""

    port: int = 0
    requests: list[tuple[str, dict[str, str]]] = attrs.field(factory=list)
    closes: list[int] = attrs.field(factory=list)
    #: The address each upgrade came from (the gateway's end of the upstream connection).
    peers: list[str] = attrs.field(factory=list)

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        headers: dict[str, str] = {}
        for k, v in request.headers:
            headers.setdefault(k.decode().lower(), v.decode())
        self.requests.append((request.path, headers))
        self.peers.append(str(getattr(request.remote, "address", request.remote)))
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                if message == "close-4002":
                    await ws.aclose(4002, "upstream says bye")
                    return
                await ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            self.closes.append(exc.reason.code if exc.reason else 1006)


@attrs.define
class Agent:
    """Credentials of one agent on disk."""

    cert: Path
    key: Path
    chain: list[x509.Certificate]


def write_agent(directory: Path, name: str, cert: x509.Certificate, key: pki.PrivateKey,
                extra: Sequence[x509.Certificate] = ()) -> Agent:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(pki.cert_pem(cert) + b"".join(pki.cert_pem(c) for c in extra))
    pki.write_private(key_path, pki.key_pem(key))
    return Agent(cert_path, key_path, [cert, *extra])


@attrs.define
class Gateway:
    switch: Switch
    config: SwitchConfig
    directory: Path
    echo: Echo
    ports: dict[str, int]

    @property
    def ca_file(self) -> Path:
        return self.directory / "pki" / "dev-root-ca.pem"

    def refusals(self, reason: str, tenant: str | None = None) -> float:
        total = 0.0
        for metric in self.switch.metrics.refusals.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["reason"] == reason and (
                        tenant is None or sample.labels["tenant"] == tenant):
                    total += sample.value
        return total

    def ssl_context(self, agent: Agent | None, max_version: ssl.TLSVersion | None = None
                    ) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if max_version is not None:
            ctx.maximum_version = max_version
        if agent is not None:
            ctx.load_cert_chain(str(agent.cert), str(agent.key))
        return ctx

    def connect(self, agent: Agent | None, *, host: str = HOST, path: str = "/agent?x=1",
                max_version: ssl.TLSVersion | None = None,
                headers: dict[str, str] | None = None) -> ClientConnection:
        """A ``websockets`` client over a socket to 127.0.0.1 with SNI and Host ``host``
        (blocking: call it in a thread)."""
        sock = socket.create_connection(("127.0.0.1", self.ports["gateway"]), timeout=10)
        return connect(f"wss://{host}:{self.ports['gateway']}{path}", sock=sock,
                       ssl=self.ssl_context(agent, max_version), server_hostname=host,
                       additional_headers=headers, open_timeout=10, compression=None,
                       proxy=None)

    async def enroll(self, secret: str, cn: str, work: Path) -> Agent:
        key = pki.generate_key()
        async with EstClient(EstServer("127.0.0.1", self.ports["enroll"], HOST,
                                       ca_file=self.ca_file)) as client:
            cert = await client.simpleenroll(make_csr(cn, key), secret)
        return write_agent(work, cn, cert, key)

    def authority(self) -> Authority:
        return Authority.open(self.config)

    async def synced(self, timeout_s: float = 2.0) -> float:
        """Wait until the gateway enforces the store's latest change; return how long it took."""
        authority = self.authority()
        try:
            target = authority.generation()
        finally:
            authority.close()
        start = trio.current_time()
        with trio.fail_after(timeout_s):
            while self.switch.current().generation < target:  # noqa: ASYNC110 - polls the server
                await trio.sleep(0.01)
        return trio.current_time() - start


def org_agent(directory: Path, ca_stem: str, name: str, *, emails: Sequence[str] = (),
              client: bool = True, validity: dt.timedelta = dt.timedelta(days=30),
              now: dt.datetime = NOW) -> Agent:
    """An agent certificate from an organisation CA in ``directory/pki``."""
    from cryptography.hazmat.primitives import serialization

    ca = x509.load_pem_x509_certificate((directory / "pki" / f"{ca_stem}.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "pki" / f"{ca_stem}.key").read_bytes(), None)
    key = pki.generate_key()
    cert = pki.make_leaf(pki.name(name), key.public_key(), (ca, ca_key), now=now,  # type: ignore[arg-type]
                         validity=validity, emails=emails, client=client, server=not client)
    return write_agent(directory, name, cert, key)


def add_acme_tenant(directory: Path) -> None:
    """A second tenant with its own organisation CA, on ``acme.switch.test``; the server
    certificate is issued again to name it too."""
    from cryptography.hazmat.primitives import serialization

    pkidir = directory / "pki"
    root = x509.load_pem_x509_certificate((pkidir / "dev-root-ca.pem").read_bytes())
    root_key = serialization.load_pem_private_key((pkidir / "dev-root-ca.key").read_bytes(), None)
    server_key = pki.generate_key()
    server = pki.make_leaf(pki.name(HOST), server_key.public_key(), (root, root_key),  # type: ignore[arg-type]
                           now=NOW, validity=dt.timedelta(days=30),
                           dns_names=[HOST, "localhost", ACME_HOST], ip_addresses=["127.0.0.1"],
                           server=True, client=False)
    (pkidir / "server.pem").write_bytes(pki.cert_pem(server) + pki.cert_pem(root))
    pki.write_private(pkidir / "server.key", pki.key_pem(server_key))
    key = pki.generate_key()
    ca = pki.make_ca(pki.name("acme organisation CA"), key, now=NOW, validity=dt.timedelta(days=365))
    (directory / "pki" / "acme-org-ca.pem").write_bytes(pki.cert_pem(ca))
    pki.write_private(directory / "pki" / "acme-org-ca.key", pki.key_pem(key))
    config = directory / "switch.toml"
    config.write_text(config.read_text() + f"""
[tenants.acme]
hostnames = ["{ACME_HOST}"]
organisation_cas = ["pki/acme-org-ca.pem"]
identity = {{ rule = "email-san" }}
upstream = "ws://127.0.0.1:1/"
""")


async def start_gateway(nursery: trio.Nursery, directory: Path, *, organisation: bool = True,
                        echo: Echo | None = None) -> Gateway:
    if not (directory / "switch.toml").exists():
        make_deployment(directory)
        add_acme_tenant(directory)
    echo = echo or Echo()
    if echo.port == 0:
        server = await nursery.start(trio_websocket.serve_websocket, echo.handler, "127.0.0.1", 0, None)
        echo.port = server.port
    path = directory / "switch.toml"
    text = path.read_text()
    text = re.sub(r'upstream = "ws://127\.0\.0\.1:8080/"', f'upstream = "ws://127.0.0.1:{echo.port}/base"', text)
    if not organisation:
        text = text.replace('organisation_cas = ["pki/demo-org-ca.pem"]', "organisation_cas = []")
    path.write_text(text)
    config = load_config(path)
    switch = Switch(config)
    listeners = await nursery.start(switch.run)
    ports = {name: socks[0].socket.getsockname()[1] for name, socks in listeners.items()}
    return Gateway(switch, config, directory, echo, ports)


def provisioning_key(gw: Gateway, name: str = "Fleet") -> str:
    """Turn the provisioning service on for ``demo`` and make a key; its secret."""
    authority = gw.authority()
    try:
        authority.enable_service("demo", actor="test")
        return authority.generate_key("demo", name, actor="test")[1]
    finally:
        authority.close()


class LiveAgent:
    """A `websockets` agent holding a session open in a thread until the server closes it."""

    def __init__(self, gw: Gateway, agent: Agent, tls: ssl.TLSVersion | None = None) -> None:
        self.ws = gw.connect(agent, max_version=tls)
        self.ws.send("hello")
        assert self.ws.recv(timeout=10) == "hello"
        self.closed = threading.Event()
        self.close_code: int | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        try:
            while True:
                self.ws.recv()
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        finally:
            self.closed.set()

    def still_works(self) -> bool:
        self.ws.send("ping?")
        return not self.closed.is_set()
