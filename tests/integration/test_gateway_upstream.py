"""Upstream connections. ``wss://`` upstreams: a tenant's ``upstream_ca`` is what the upstream's
certificate must chain to; a certificate that does not gets the agent a 502 with the reason.
``[gateway] upstream_source_addresses``: the upstream sees each connection from the next of them,
and a reload changes them. Real loopback sockets, a (TLS) WebSocket echo server, `websockets`
as the agent."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio_websocket
from websockets.exceptions import InvalidStatus

from config.errors import ConfigError
from config.load import load_config
from tests.support.est import HOST, make_deployment
from tests.support.gateway import (
    ACME_HOST,
    Agent,
    Echo,
    Gateway,
    add_acme_tenant,
    org_agent,
    start_gateway,
)
from tests.support.pki import write_ca, write_server


def _upgrade_status(gw: Gateway, agent: Agent, host: str) -> int | str:
    """The echo's reply through the gateway, or the HTTP status that refused the upgrade."""
    try:
        with gw.connect(agent, host=host) as ws:
            ws.send("over tls")
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str)
            return reply
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_a_wss_upstream_is_verified_against_the_tenants_upstream_ca(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    private = directory / "upstream-pki"
    private.mkdir()
    ca, ca_key, _ = write_ca(private, "upstream")
    server_pem, server_key = write_server(private, (ca, ca_key), dns_names=("localhost",))
    stranger = directory / "stranger-pki"
    stranger.mkdir()
    write_ca(stranger, "stranger")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(server_pem, server_key)
    echo = Echo()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, echo.handler,
                                         "127.0.0.1", 0, server_ctx)
            echo.port = server.port
            config = directory / "switch.toml"
            text = config.read_text()
            # demo trusts the CA that signed the upstream's certificate; acme trusts another.
            text = text.replace('upstream = "ws://127.0.0.1:8080/"',
                                f'upstream = "wss://localhost:{echo.port}/base"\n'
                                'upstream_ca = "upstream-pki/upstream.pem"')
            text = text.replace('upstream = "ws://127.0.0.1:1/"',
                                f'upstream = "wss://localhost:{echo.port}/base"\n'
                                'upstream_ca = "stranger-pki/stranger.pem"')
            config.write_text(text)
            gw = await start_gateway(nursery, directory, echo=echo)
            demo = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            assert await trio.to_thread.run_sync(_upgrade_status, gw, demo, HOST) == "over tls"
            path, headers = echo.requests[-1]
            assert path == "/base/agent?x=1"
            assert headers["x-switch-identity"] == "agent1@demo.switch.test"

            acme = org_agent(directory, "acme-org-ca", "acme-agent", emails=["a@acme.test"])
            assert await trio.to_thread.run_sync(_upgrade_status, gw, acme, ACME_HOST) == 502
            assert gw.refusals("upstream_tls_error", "acme") == 1
            assert len(echo.requests) == 1  # the unverified upstream never saw the request
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("upstream", "ca_file", "message"), [
    ("ws://127.0.0.1:8080/", "pki/dev-root-ca.pem", "applies to a wss:// upstream only"),
    (None, "pki/dev-root-ca.pem", "applies to a wss:// upstream only"),
    ("wss://127.0.0.1:8443/", "switch.toml", "no readable PEM certificate"),
    ("wss://127.0.0.1:8443/", "pki/missing.pem", "cannot read"),
])
def test_upstream_ca_is_checked_when_the_config_loads(
        tmp_path: Path, upstream: str | None, ca_file: str, message: str) -> None:
    make_deployment(tmp_path)
    config = tmp_path / "switch.toml"
    replacement = (f'upstream = "{upstream}"\n' if upstream else "") + f'upstream_ca = "{ca_file}"'
    config.write_text(config.read_text().replace('upstream = "ws://127.0.0.1:8080/"', replacement))
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    problems = [p for p in refused.value.problems if p.key == "tenants.demo.upstream_ca"]
    assert problems and message in problems[0].message, refused.value.problems


async def test_upstream_connections_leave_from_the_configured_source_addresses(
        tmp_path: Path) -> None:
    make_deployment(tmp_path)
    config = tmp_path / "switch.toml"
    text = config.read_text()
    assert "[gateway]\n" in text
    config.write_text(text.replace(
        "[gateway]\n", '[gateway]\nupstream_source_addresses = ["127.0.0.2", "127.0.0.3"]\n', 1))
    demo = Agent(tmp_path / "pki/demo-agent.pem", tmp_path / "pki/demo-agent.key", [])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path)

            async def peers(sessions: int) -> list[str]:
                before = len(gw.echo.peers)
                for _ in range(sessions):
                    assert await trio.to_thread.run_sync(_upgrade_status, gw, demo, HOST) == "over tls"
                return gw.echo.peers[before:]

            seen = await peers(4)
            assert sorted(seen) == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]
            assert seen[0] != seen[1]  # in turn
            text = config.read_text()
            config.write_text(text.replace('["127.0.0.2", "127.0.0.3"]', '["127.0.0.4"]'))
            assert (await gw.switch.reload()).ok
            assert await peers(2) == ["127.0.0.4", "127.0.0.4"]
            config.write_text(text.replace(
                'upstream_source_addresses = ["127.0.0.2", "127.0.0.3"]\n', ""))
            assert (await gw.switch.reload()).ok
            assert await peers(1) == ["127.0.0.1"]  # the kernel's choice again
            nursery.cancel_scope.cancel()
