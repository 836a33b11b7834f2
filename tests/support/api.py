"""A running Switch (in this process) with its admin API, two tenants (``demo`` and ``acme``),
three operators (``admin``: security-admin of every tenant; ``reader``: security-read;
``demo-admin``: security-admin of ``demo`` only), and httpx clients over real TLS."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from config.load import load_config
from config.model import SwitchConfig
from enroll import pki
from enroll.authority import Authority
from enroll.operator_admin import OperatorAdmin
from gateway.client.est_client import EstClient, EstClientError, EstServer, make_csr
from gateway.serve import Switch
from tests.support.est import HOST, make_deployment

ACME = """
[tenants.acme]
hostnames = ["acme.switch.test"]
upstream = "ws://127.0.0.1:8080/"
"""
OPERATORS = (("admin", "security-admin", None), ("reader", "security-read", None),
             ("demo-admin", "security-admin", ("demo",)))


def deployment(directory: Path, extra: str = "") -> SwitchConfig:
    path = make_deployment(directory).path
    path.write_text(path.read_text() + ACME + extra)
    return load_config(path)


def add_operators(config: SwitchConfig) -> dict[str, str]:
    authority = Authority.open(config)
    try:
        admin = OperatorAdmin(authority)
        return {name: admin.add(name, role=role, tenants=tenants, actor="local:test")[1]
                for name, role, tenants in OPERATORS}
    finally:
        authority.close()


@attrs.define(eq=False)
class Api:
    switch: Switch
    config: SwitchConfig
    directory: Path
    tokens: dict[str, str]
    port: int
    enroll_port: int

    @property
    def ca_file(self) -> Path:
        return self.directory / "pki" / "dev-root-ca.pem"

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}/api/v1"

    def client(self, operator: str | None = None, *, token: str | None = None
               ) -> httpx.AsyncClient:
        """A client as ``operator`` (or with ``token``; neither: no Authorization header)."""
        token = token if token is not None else self.tokens[operator] if operator else None
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30,
                                 verify=ssl.create_default_context(cafile=str(self.ca_file)))

    async def call(self, operator: str | None, method: str, path: str,
                   body: Any = None, **params: Any) -> httpx.Response:
        async with self.client(operator) as client:
            return await client.request(method, path, json=body,
                                        params={k: v for k, v in params.items() if v is not None})

    async def ok(self, operator: str, method: str, path: str, body: Any = None,
                 **params: Any) -> Any:
        response = await self.call(operator, method, path, body, **params)
        assert response.is_success, (method, path, response.status_code, response.text)
        return response.json()

    async def enroll(self, secret: str, cn: str, key: pki.PrivateKey | None = None) -> int:
        """simpleenroll through the enroll port: 200 issued, 202 held for approval."""
        async with EstClient(EstServer("127.0.0.1", self.enroll_port, HOST,
                                       ca_file=self.ca_file)) as client:
            try:
                await client.simpleenroll(make_csr(cn, key or pki.generate_key()), secret)
            except EstClientError as exc:
                return exc.status
        return 200


@asynccontextmanager
async def running_api(directory: Path, extra: str = "", config: SwitchConfig | None = None
                      ) -> AsyncIterator[Api]:
    config = config or deployment(directory, extra)
    tokens = add_operators(config)
    switch = Switch(config)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(switch.run)
        yield Api(switch, config, directory, tokens,
                  listeners["api"][0].socket.getsockname()[1],
                  listeners["enroll"][0].socket.getsockname()[1])
        switch.stop()


def sample(metric: Any, **labels: str) -> float:
    """The sum of a counter's ``_total`` samples whose labels include ``labels``."""
    total = 0.0
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
