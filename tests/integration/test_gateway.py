"""The gateway port end to end: real loopback sockets, real handshakes, agents that are not our
code (the `websockets` package over `ssl`, `openssl s_client`), TLS 1.2 and 1.3."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
import trio_websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from enroll import pki
from gateway.client.est_client import EstClient, EstServer, make_csr
from gateway.tls import OpenSSLStream
from gateway.tls_context import client_context
from tests.support.est import HOST, make_deployment
from tests.support.gateway import (
    ACME_HOST,
    Agent,
    Echo,
    Gateway,
    add_acme_tenant,
    org_agent,
    provisioning_key,
    start_gateway,
    write_agent,
)

VERSIONS = pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                                   ids=["tls1.2", "tls1.3"])




def _round_trip(gateway: Gateway, agent: Agent | None, message: str = "hello", **kw: object) -> str:
    with gateway.connect(agent, **kw) as ws:  # type: ignore[arg-type]
        ws.send(message)
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str)
        return reply


async def _refused(gateway: Gateway, agent: Agent | None, reason: str, *, tenant: str | None = None,
                   **kw: object) -> None:
    before = gateway.refusals(reason, tenant)
    with pytest.raises((ssl.SSLError, OSError, WebSocketException, EOFError)):
        await trio.to_thread.run_sync(lambda: _round_trip(gateway, agent, **kw))
    with trio.fail_after(5):
        while gateway.refusals(reason, tenant) == before:  # noqa: ASYNC110 - the server's count
            await trio.sleep(0.02)


@VERSIONS
async def test_enrolled_agent_reaches_the_upstream_with_identity_headers(gw: Gateway,
        tmp_path: Path, tls: ssl.TLSVersion) -> None:
    with trio.fail_after(60):
        agent = await gw.enroll(provisioning_key(gw), "laptop-1", tmp_path)
        await gw.synced()
        spoof = {"X-Switch-Identity": "admin", "X-Switch-Trust": "organisation",
                 "x-switch-tenant": "acme", "X-Custom": "kept"}
        reply = await trio.to_thread.run_sync(
            lambda: _round_trip(gw, agent, max_version=tls, headers=spoof))
        assert reply == "hello"
        path, headers = gw.echo.requests[-1]
        assert path == "/base/agent?x=1"
        cert = agent.chain[0]
        assert headers["x-switch-tenant"] == "demo"
        assert headers["x-switch-identity"] == "laptop-1"
        assert headers["x-switch-trust"] == "provisioned"
        assert headers["x-switch-key-id"].startswith("pk_")
        assert headers["x-switch-cert-serial"] == format(cert.serial_number, "x")
        assert headers["x-switch-cert-sha256"] == pki.sha256_fingerprint(cert)
        assert headers["x-custom"] == "kept"


@VERSIONS
async def test_organisation_agent_connects_when_that_source_is_on(gw: Gateway, tmp_path: Path,
                                                                  tls: ssl.TLSVersion) -> None:
    with trio.fail_after(60):
        agent = Agent(gw.directory / "pki/demo-agent.pem", gw.directory / "pki/demo-agent.key", [])
        assert await trio.to_thread.run_sync(lambda: _round_trip(gw, agent, max_version=tls)) == "hello"
        headers = gw.echo.requests[-1][1]
        assert (headers["x-switch-trust"], headers["x-switch-identity"]) == \
            ("organisation", "agent1@demo.switch.test")
        assert "x-switch-key-id" not in headers


async def test_organisation_agent_is_refused_when_that_source_is_off(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, tmp_path / "d", organisation=False)
            agent = Agent(gw.directory / "pki/demo-agent.pem", gw.directory / "pki/demo-agent.key", [])
            await _refused(gw, agent, "untrusted_issuer", tenant="demo")
            nursery.cancel_scope.cancel()


@VERSIONS
async def test_bad_certificates_are_refused_with_their_reason(tmp_path: Path, tls: ssl.TLSVersion) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            acme = org_agent(directory, "acme-org-ca", "acme-agent", emails=["a@acme.test"])
            await _refused(gw, acme, "untrusted_issuer", tenant="demo", max_version=tls)
            no_client_auth = org_agent(directory, "demo-org-ca", "server-only",
                                       emails=["s@demo.switch.test"], client=False)
            await _refused(gw, no_client_auth, "no_client_auth", tenant="demo", max_version=tls)
            two_emails = org_agent(directory, "demo-org-ca", "two-emails",
                                   emails=["a@demo.switch.test", "b@demo.switch.test"])
            await _refused(gw, two_emails, "identity_email_count", tenant="demo", max_version=tls)
            not_allowed = org_agent(directory, "demo-org-ca", "outsider", emails=["x@evil.example"])
            await _refused(gw, not_allowed, "identity_not_allowed", tenant="demo", max_version=tls)
            expired = org_agent(directory, "demo-org-ca", "expired", emails=["e@demo.switch.test"],
                                now=dt.datetime.now(dt.UTC) - dt.timedelta(days=60))
            await _refused(gw, expired, "certificate_expired", tenant="demo", max_version=tls)
            await _refused(gw, None, "no_client_certificate", max_version=tls)
            nursery.cancel_scope.cancel()


async def test_unknown_sni_is_refused_without_a_default_tenant(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            agent = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            await _refused(gw, agent, "unknown_server_name", host="nobody.switch.test")
            nursery.cancel_scope.cancel()


async def _s_client(args: list[str], request: bytes) -> bytes:
    """Run ``openssl s_client``, send ``request``, return what came back until the end of the
    HTTP response head or the connection (then stop the process: s_client waits on stdin)."""
    proc = await trio.lowlevel.open_process(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    received = b""
    try:
        await proc.stdin.send_all(request)
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in received:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    break
                received += chunk
    finally:
        proc.kill()
        await proc.wait()
    return received


async def test_openssl_s_client_is_refused_without_a_certificate_and_admitted_with_one(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            base = ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.ports['gateway']}",
                    "-servername", HOST, "-CAfile", str(gw.ca_file), "-verify_return_error",
                    "-quiet"]
            with_cert = ["-cert", str(directory / "pki/demo-agent.pem"),
                         "-key", str(directory / "pki/demo-agent.key")]
            request = (f"GET /x HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n").encode()
            assert b"101" not in await _s_client(base, request)
            assert gw.refusals("no_client_certificate") >= 1
            admitted = await _s_client([*base, *with_cert], request)
            assert admitted.startswith(b"HTTP/1.1 101"), admitted
            mismatch = await _s_client([*base, *with_cert], request.replace(
                f"Host: {HOST}".encode(), f"Host: {ACME_HOST}".encode()))
            assert mismatch.startswith(b"HTTP/1.1 421"), mismatch
            assert gw.refusals("host_mismatch", "demo") == 1
            for version in ("-tls1_2", "-tls1_3"):
                assert (await _s_client([*base, *with_cert, version], request)).startswith(
                    b"HTTP/1.1 101")
            nursery.cancel_scope.cancel()


async def test_a_session_cannot_be_resumed_under_another_sni(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization

            ca = x509.load_pem_x509_certificate(gw.ca_file.read_bytes())
            cert = x509.load_pem_x509_certificate((directory / "pki/demo-agent.pem").read_bytes())
            key = serialization.load_pem_private_key((directory / "pki/demo-agent.key").read_bytes(), None)
            ctx = client_context(trust=[ca], chain=[cert], key=key,  # type: ignore[arg-type]
                                 max_version=SSL.TLS1_2_VERSION)
            session = None
            results = []
            for sni in (HOST, ACME_HOST):
                tcp = await trio.open_tcp_stream("127.0.0.1", gw.ports["gateway"])
                client = OpenSSLStream.client(tcp, ctx, sni)
                if session is not None:
                    client.connection.set_session(session)
                try:
                    await client.do_handshake()
                    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    await client.receive_some()
                    results.append(("ok", client.session_reused))
                except trio.BrokenResourceError:
                    results.append(("refused", client.session_reused))
                session = session or client.connection.get_session()
                await trio.aclose_forcefully(client)
            assert results[0] == ("ok", False)
            assert results[1] == ("refused", False)
            assert gw.refusals("untrusted_issuer", "acme") == 1
            nursery.cancel_scope.cancel()


async def test_unreachable_upstream_gets_a_clear_502(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            acme = org_agent(directory, "acme-org-ca", "acme-ok", emails=["ok@acme.test"])

            def attempt() -> int:
                try:
                    _round_trip(gw, acme, host=ACME_HOST)
                except InvalidStatus as exc:
                    return exc.response.status_code
                return 101

            assert await trio.to_thread.run_sync(attempt) == 502
            assert gw.refusals("upstream_unavailable", "acme") == 1
            nursery.cancel_scope.cancel()


async def test_close_codes_pass_through_both_ways(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            agent = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])

            def agent_closes() -> None:
                ws = gw.connect(agent)
                ws.send("x")
                ws.recv(timeout=10)
                ws.close(4001, "agent says bye")

            await trio.to_thread.run_sync(agent_closes)
            with trio.fail_after(5):
                while 4001 not in gw.echo.closes:  # noqa: ASYNC110
                    await trio.sleep(0.02)

            def upstream_closes() -> int | None:
                ws = gw.connect(agent)
                ws.send("close-4002")
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(timeout=10)
                return info.value.rcvd.code if info.value.rcvd else None

            assert await trio.to_thread.run_sync(upstream_closes) == 4002
            nursery.cancel_scope.cancel()


async def test_admin_port_serves_health_readiness_and_metrics(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            agent = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
            await trio.to_thread.run_sync(lambda: _round_trip(gw, agent))
            base = f"http://127.0.0.1:{gw.ports['admin']}"
            for path, expected in (("/healthz", b"ok"), ("/readyz", b"ready; config generation 1")):
                result = await trio.run_process(["curl", "-sS", base + path], capture_stdout=True)
                assert result.stdout.strip() == expected
            metrics = (await trio.run_process(["curl", "-sS", base + "/metrics"],
                                              capture_stdout=True)).stdout.decode()
            assert 'switch_handshakes_total{result="ok",tenant="demo"} 1.0' in metrics
            assert 'switch_relay_messages_total{direction="in",tenant="demo"} 1.0' in metrics
            assert "switch_sessions" in metrics and "switch_trust_generation" in metrics
            nursery.cancel_scope.cancel()
    assert json.dumps  # keep the import for readers of failures


class RawEcho(Echo):
    """An echo upstream that also keeps each upgrade's headers as sent, duplicates included."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[list[tuple[str, str]]] = []

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        self.raw.append([(k.decode(), v.decode()) for k, v in request.headers])
        await super().handler(request)


async def _with_echo(nursery: trio.Nursery, echo: Echo) -> Echo:
    server = await nursery.start(trio_websocket.serve_websocket, echo.handler, "127.0.0.1", 0, None)
    echo.port = server.port
    return echo


def _demo_agent(gw: Gateway) -> Agent:
    return Agent(gw.directory / "pki/demo-agent.pem", gw.directory / "pki/demo-agent.key", [])


async def test_identity_headers_in_any_spelling_never_reach_the_upstream(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            echo = await _with_echo(nursery, RawEcho())
            gw = await start_gateway(nursery, tmp_path / "d", echo=echo)
            spoof = [("X-Switch-Identity", "admin"), ("x-switch-identity", "admin"),
                     ("X-SWITCH-TRUST", "provisioned"), ("x_switch_identity", "admin"),
                     ("X_Switch_Key_Id", "pk_x"), ("x-switch_trust", "provisioned"),
                     ("X-Switch-Tenant", "acme"), ("X-Switch-Tenant", "acme"),
                     ("X-Custom", "kept")]
            reply = await trio.to_thread.run_sync(
                lambda: _round_trip(gw, _demo_agent(gw), headers=spoof))  # type: ignore[arg-type]
            assert reply == "hello"
            sent = echo.raw[-1]
            switch = [(k.lower().replace("_", "-"), v) for k, v in sent
                      if k.lower().replace("_", "-").startswith("x-switch-")]
            assert sorted(k for k, _ in switch) == sorted(
                ["x-switch-tenant", "x-switch-identity", "x-switch-trust", "x-switch-cert-serial",
                 "x-switch-cert-sha256"])  # each exactly once, and ours
            assert dict(switch)["x-switch-identity"] == "agent1@demo.switch.test"
            assert dict(switch)["x-switch-trust"] == "organisation"
            assert ("x-custom", "kept") in [(k.lower(), v) for k, v in sent]
            nursery.cancel_scope.cancel()


async def test_the_agents_path_stays_under_the_upstream_base_and_both_queries_are_kept(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            echo = await _with_echo(nursery, Echo())
            config = directory / "switch.toml"
            config.write_text(config.read_text().replace(
                'upstream = "ws://127.0.0.1:8080/"',
                f'upstream = "ws://127.0.0.1:{echo.port}/agents?token=abc"'))
            gw = await start_gateway(nursery, directory, echo=echo)
            agent = _demo_agent(gw)
            assert await trio.to_thread.run_sync(
                lambda: _round_trip(gw, agent, path="/v1/stream?x=1")) == "hello"
            assert gw.echo.requests[-1][0] == "/agents/v1/stream?token=abc&x=1"
            for path in ("/../admin", "/v1/%2e%2e/%2E%2E/admin", "/v1/..%2f..%2fadmin"):

                def attempt(path: str = path) -> int:
                    try:
                        _round_trip(gw, agent, path=path)
                    except InvalidStatus as exc:
                        return exc.response.status_code
                    return 101

                assert await trio.to_thread.run_sync(attempt) == 400
            assert gw.refusals("bad_path", "demo") == 3
            assert len(gw.echo.requests) == 1
            nursery.cancel_scope.cancel()


@VERSIONS
async def test_an_identity_with_a_line_break_is_refused_in_the_handshake(
        tmp_path: Path, tls: ssl.TLSVersion) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            forged = org_agent(directory, "demo-org-ca", "forged",
                               emails=["x\r\nX-Switch-Identity: admin@demo.switch.test"])
            await _refused(gw, forged, "identity_invalid", tenant="demo", max_version=tls)
            assert not gw.echo.requests
            nursery.cancel_scope.cancel()


async def test_a_certificate_from_another_tenants_provisioning_issuer_is_refused(
        tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            provisioning_key(gw)  # demo's provisioning service is on too
            authority = gw.authority()
            try:
                authority.enable_service("acme", actor="test")
                secret = authority.generate_key("acme", "Acme fleet", actor="test")[1]
            finally:
                authority.close()
            key = pki.generate_key()
            async with EstClient(EstServer("127.0.0.1", gw.ports["enroll"], ACME_HOST,
                                           ca_file=gw.ca_file)) as client:
                cert = await client.simpleenroll(make_csr("acme-laptop", key), secret)
            acme_agent = write_agent(tmp_path, "acme-laptop", cert, key)
            await gw.synced()
            await _refused(gw, acme_agent, "untrusted_issuer", tenant="demo")
            # The same certificate is good where it belongs: it gets as far as acme's upstream.
            await _refused(gw, acme_agent, "upstream_unavailable", tenant="acme", host=ACME_HOST)
            nursery.cancel_scope.cancel()


@VERSIONS
async def test_organisation_certificates_are_refused_while_their_crl_is_past_next_update(
        tmp_path: Path, tls: ssl.TLSVersion) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    ca = x509.load_pem_x509_certificate((directory / "pki/demo-org-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "pki/demo-org-ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now - dt.timedelta(days=8)).next_update(now - dt.timedelta(days=1))
           .add_extension(x509.CRLNumber(1), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
               ca.public_key()), critical=False)  # type: ignore[arg-type]
           .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (directory / "pki/demo-org.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    config = directory / "switch.toml"
    config.write_text(config.read_text().replace(
        "organisation_crls = []", 'organisation_crls = ["pki/demo-org.crl"]', 1))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            await _refused(gw, _demo_agent(gw), "crl_expired", tenant="demo", max_version=tls)
            nursery.cancel_scope.cancel()


def _connect_without_checking_names(gw: Gateway, server_name: str, host: str,
                                    path: str = "/agent") -> ClientConnection:
    """A `websockets` client whose SNI is ``server_name`` (an IP address: none at all) and whose
    upgrade names ``host``; the server certificate is verified, its names are not."""
    ctx = gw.ssl_context(_demo_agent(gw))
    ctx.check_hostname = False
    sock = socket.create_connection(("127.0.0.1", gw.ports["gateway"]), timeout=10)
    return connect(f"wss://{host}{path}", sock=sock, ssl=ctx, server_hostname=server_name,
                   open_timeout=10, compression=None, proxy=None)


async def test_default_tenant_takes_connections_without_or_with_unknown_sni(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    make_deployment(directory)
    add_acme_tenant(directory)
    config = directory / "switch.toml"
    config.write_text('default_tenant = "demo"\n' + config.read_text())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)

            def exchange(server_name: str, host: str) -> str | int:
                try:
                    with _connect_without_checking_names(gw, server_name, host) as ws:
                        ws.send("hello")
                        reply = ws.recv(timeout=10)
                        assert isinstance(reply, str)
                        return reply
                except InvalidStatus as exc:
                    return exc.response.status_code

            # No SNI (an IP address sends none): the default tenant, whatever the Host says.
            for host in ("127.0.0.1", "anything.example"):
                assert await trio.to_thread.run_sync(exchange, "127.0.0.1", host) == "hello"
                assert gw.echo.requests[-1][1]["x-switch-tenant"] == "demo"
            # An SNI no tenant claims: the default tenant too, but then the Host rule holds.
            assert await trio.to_thread.run_sync(exchange, "nobody.switch.test", HOST) == "hello"
            assert await trio.to_thread.run_sync(
                exchange, "nobody.switch.test", "nobody.switch.test") == 421
            assert gw.refusals("host_mismatch", "demo") == 1
            assert gw.refusals("unknown_server_name") == gw.refusals("no_server_name") == 0
            # A name another tenant claims is that tenant's, whose CA did not sign this agent.
            await _refused(gw, _demo_agent(gw), "untrusted_issuer", tenant="acme", host=ACME_HOST)
            nursery.cancel_scope.cancel()


async def test_readyz_answers_503_when_the_store_is_unreachable(gw: Gateway, tmp_path: Path) -> None:
    with trio.fail_after(60):
        url = f"http://127.0.0.1:{gw.ports['admin']}/readyz"

        async def readyz() -> tuple[str, bytes]:
            result = await trio.run_process(
                ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", url], capture_stdout=True)
            body, _, status = result.stdout.rpartition(b"\n")
            return status.decode(), body.strip()

        assert (await readyz())[0] == "200"
        # The store's connection fails from now on, as a store on a lost disk would.
        gw.switch.authority.store.conn.close()
        assert await readyz() == ("503", b"store_unreachable")


async def test_renegotiation_is_refused(tmp_path: Path) -> None:
    """``openssl s_client`` asks for a TLS 1.2 renegotiation (its interactive ``R`` command): the
    server refuses it (``no renegotiation`` alert) and the session ends before any upgrade."""
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            proc = await trio.lowlevel.open_process(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.ports['gateway']}",
                 "-servername", HOST, "-CAfile", str(gw.ca_file), "-tls1_2",
                 "-cert", str(directory / "pki/demo-agent.pem"),
                 "-key", str(directory / "pki/demo-agent.key")],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert proc.stdin is not None and proc.stderr is not None
            errors = b""
            try:
                while b"verify return:1\n" not in errors or errors.count(b"verify return") < 2:
                    errors += await proc.stderr.receive_some(4096)
                await proc.stdin.send_all(b"R\n")
                while b"no renegotiation" not in errors:
                    chunk = await proc.stderr.receive_some(4096)
                    if not chunk:
                        break
                    errors += chunk
            finally:
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert b"RENEGOTIATING" in errors and b"no renegotiation" in errors, errors
            with trio.fail_after(5):
                while gw.refusals("upgrade_aborted", "demo") == 0:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert not gw.echo.requests
            nursery.cancel_scope.cancel()


async def test_the_certificate_request_names_only_the_tenants_own_cas(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            gw = await start_gateway(nursery, directory)
            provisioning_key(gw)  # demo trusts its provisioning issuer too
            await gw.synced()

            async def acceptable_names(server_name: str) -> list[str]:
                result = await trio.run_process(
                    ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.ports['gateway']}",
                     "-tls1_2", "-servername", server_name, "-CAfile", str(gw.ca_file)],
                    stdin=b"", capture_stdout=True, capture_stderr=True, check=False)
                out = result.stdout.decode()
                assert "Acceptable client certificate CA names" in out, out
                block = out.split("Acceptable client certificate CA names\n", 1)[1]
                return block.split("Client Certificate Types", 1)[0].strip().splitlines()

            demo = await acceptable_names(HOST)
            acme = await acceptable_names(ACME_HOST)
            assert len(demo) == 2
            assert any("demo organisation CA" in name for name in demo)
            assert any("demo" in name and "organisation" not in name for name in demo), demo
            assert acme == ["CN = acme organisation CA"]
            nursery.cancel_scope.cancel()
