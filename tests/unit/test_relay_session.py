"""``run_session``'s opening phase over memory streams: registration and evictions before the
relay, refusals counted and logged once, an upstream request h11 cannot write."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs
import structlog
import trio
import trio.testing

from config.model import GatewaySettings, IdentityRule, ServerTLS, SwitchConfig, Tenant
from gateway import relay
from gateway.metrics import Metrics
from gateway.peer import Decision, TenantTrust
from gateway.sessions import SessionRegistry

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
ISSUER = b"i" * 32
ADMITTED = Decision(True, "ok", "demo", "provisioned", "laptop-1", "pk_1", "1f", "ab" * 32,
                    ISSUER, NOW + dt.timedelta(days=1))
TENANT = Tenant("demo", ("demo.switch.test",), upstream="ws://127.0.0.1:9/")
CONFIG = SwitchConfig(Path("/s/switch.toml"), Path("/s/state"), ServerTLS(),
                      tenants={"demo": TENANT, "acme": Tenant("acme", ("acme.switch.test",))})
UPGRADE = (b"GET /agent HTTP/1.1\r\nHost: demo.switch.test\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def _trust(**kw: object) -> dict[str, TenantTrust]:
    trust = TenantTrust(name="demo", identity=IdentityRule(), organisation_cas={},
                        provisioning_issuers={ISSUER: None},  # type: ignore[dict-item]
                        revoked_serials={}, revoked_keys=frozenset(),
                        revoked_certificates=frozenset())
    return {"demo": attrs.evolve(trust, **kw)}


async def _reply(stream: trio.abc.Stream) -> bytes:
    """Everything the gateway sends before it closes."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def _session(stream: trio.abc.Stream, registry: SessionRegistry, metrics: Metrics, *,
                   decision: Decision = ADMITTED, tenant: Tenant = TENANT,
                   trust: dict[str, TenantTrust] | None = None,
                   settings: GatewaySettings | None = None) -> str:
    try:
        return await relay.run_session(
            stream, decision, tenant, sni="demo.switch.test", config=CONFIG,
            settings=settings or GatewaySettings(), registry=registry, metrics=metrics,
            peer="10.0.0.7:4711", trust=_trust() if trust is None else trust, now=NOW)
    finally:
        await stream.aclose()


async def test_a_key_revoked_while_the_handshake_ran_is_refused_at_registration(
        autojump_clock: trio.abc.Clock) -> None:
    evicted: list[str] = []
    registry, metrics = SessionRegistry(on_evict=lambda s, r: evicted.append(r)), Metrics()
    gw, agent = trio.testing.memory_stream_pair()
    await agent.send_all(UPGRADE)
    result = await _session(gw, registry, metrics, trust=_trust(revoked_keys=frozenset({"pk_1"})))
    assert result == "key_revoked" and evicted == ["key_revoked"]
    assert (await _reply(agent)).startswith(b"HTTP/1.1 403 ")
    assert metrics.registry.get_sample_value(
        "switch_refusals_total", {"tenant": "demo", "reason": "key_revoked"}) == 1
    assert len(registry) == 0


async def test_an_eviction_while_the_upgrade_is_awaited_refuses_it_at_once(
        autojump_clock: trio.abc.Clock) -> None:
    registry, metrics = SessionRegistry(), Metrics()
    gw, agent = trio.testing.memory_stream_pair()
    results: list[str] = []
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            results.append(await _session(gw, registry, metrics))

        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        assert len(registry) == 1  # registered before any byte of the upgrade
        start = trio.current_time()
        registry.reevaluate(_trust(revoked_keys=frozenset({"pk_1"})), NOW)
        reply = await _reply(agent)
        assert trio.current_time() - start < 0.1
    assert reply.startswith(b"HTTP/1.1 403 ") and reply.endswith(b"403 key_revoked\n")
    assert results == ["key_revoked"]


async def test_upgrade_refusals_are_counted_and_logged_once_with_tenant_reason_and_peer(
        autojump_clock: trio.abc.Clock) -> None:
    registry, metrics = SessionRegistry(), Metrics()
    gw, agent = trio.testing.memory_stream_pair()
    await agent.send_all(UPGRADE.replace(b"Host: demo.switch.test", b"Host: acme.switch.test"))
    with structlog.testing.capture_logs() as logs:
        assert await _session(gw, registry, metrics) == "host_mismatch"
    assert (await _reply(agent)).startswith(b"HTTP/1.1 421 ")
    assert [entry for entry in logs if entry["event"] == "upgrade_refused"] == [
        {"event": "upgrade_refused", "log_level": "info", "tenant": "demo",
         "reason": "host_mismatch", "peer": "10.0.0.7:4711", "status": 421}]
    gw, agent = trio.testing.memory_stream_pair()
    await agent.send_all(UPGRADE.replace(b"GET /agent", b"GET /../admin"))
    with structlog.testing.capture_logs() as logs:
        assert await _session(gw, registry, metrics) == "bad_path"
    assert (await _reply(agent)).startswith(b"HTTP/1.1 400 ")
    assert [(e["reason"], e["status"]) for e in logs] == [("bad_path", 400)]


async def test_an_identity_h11_cannot_write_gets_a_502_instead_of_escaping() -> None:
    """Defence in depth: ``check_peer`` refuses such an identity, but if one got through, the
    upstream request fails as an unusable upstream, not as an exception out of the session."""
    registry, metrics = SessionRegistry(), Metrics()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tenant = attrs.evolve(TENANT, upstream=f"ws://127.0.0.1:{port}/")
    gw, agent = trio.testing.memory_stream_pair()
    await agent.send_all(UPGRADE)
    with trio.fail_after(10):
        result = await _session(gw, registry, metrics, tenant=tenant,
                                decision=attrs.evolve(ADMITTED, identity="a\r\nX-Evil: 1"))
    assert result == "upstream_unavailable"
    assert (await _reply(agent)).startswith(b"HTTP/1.1 502 ")
    for listener in listeners:
        await listener.aclose()
