"""The pure rules of the WebSocket upgrade: what is refused, the headers and URL that go
upstream, the Host check, the accept token both ways."""

from __future__ import annotations

from pathlib import Path

import attrs
import h11
import pytest
import trio
import trio.testing

from config.model import ServerTLS, SwitchConfig, Tenant
from gateway import relay
from gateway.peer import Decision
from gateway.relay import session, upgrade, upstream

TENANT = Tenant("demo", ("demo.switch.test",), upstream="ws://127.0.0.1:9/")
CONFIG = SwitchConfig(Path("/s/switch.toml"), Path("/s/state"), ServerTLS(),
                      tenants={"demo": TENANT, "acme": Tenant("acme", ("acme.switch.test",))})


@pytest.mark.parametrize(("raw", "status", "reason"), [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405, "not_an_upgrade"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 426, "not_an_upgrade"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
     426, "unsupported_websocket_version"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n", 400, "bad_websocket_key"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 40000 + b"\r\n\r\n", 431, "bad_request"),
    (b"\x16\x03\x01 not http at all\r\n\r\n", 400, "bad_request"),
])
async def test_bad_upgrades_are_refused_with_a_status(raw: bytes, status: int, reason: str) -> None:
    gw, client = trio.testing.memory_stream_pair()
    await client.send_all(raw)
    with pytest.raises(relay.UpgradeRefused) as refused:
        await session._read_upgrade(gw)
    assert (refused.value.status, refused.value.reason) == (status, reason)


# --- identity headers and the upstream URL ------------------------------------------------------


def test_agent_sent_identity_headers_are_dropped_however_spelled() -> None:
    sent = [(b"X-Switch-Identity", b"admin"), (b"x-switch-identity", b"admin"),
            (b"X-SWITCH-TRUST", b"organisation"), (b"x_switch_identity", b"admin"),
            (b"X_Switch_Key_Id", b"pk_x"), (b"x-switch_trust", b"organisation"),
            (b"X-Switch-Tenant", b"acme"), (b"X-Switch-Tenant", b"other"),
            (b"sec_websocket_key", b"c3B5"), (b"X-Custom", b"kept"), (b"x_custom2", b"kept")]
    decision = Decision(True, "ok", "demo", trust="provisioned", identity="laptop-1",
                        key_id="pk_1", serial="1f", sha256="ab" * 32)
    out = relay.forwarded_headers(sent) + relay.identity_headers(decision)
    normal = [name.lower().replace(b"_", b"-") for name, _ in out]
    real = [b"x-switch-tenant", b"x-switch-identity", b"x-switch-trust", b"x-switch-key-id",
            b"x-switch-cert-serial", b"x-switch-cert-sha256"]
    assert [n for n in normal if n.startswith(b"x-switch-")] == real  # each once, ours
    assert dict(out)[b"X-Switch-Identity"] == b"laptop-1"
    assert (b"X-Custom", b"kept") in out and (b"x_custom2", b"kept") in out
    assert b"sec-websocket-key" not in normal


@pytest.mark.parametrize(("base", "target", "expected"), [
    ("ws://u:8080/agents", "/v1/stream?x=1", "ws://u:8080/agents/v1/stream?x=1"),
    ("ws://u:8080/agents/", "/v1", "ws://u:8080/agents/v1"),
    ("ws://u:8080", "/v1?x=1", "ws://u:8080/v1?x=1"),
    ("ws://u:8080/", "/", "ws://u:8080/"),
    ("wss://u/agents?token=abc", "/v1?x=1", "wss://u/agents/v1?token=abc&x=1"),
    ("wss://u/agents?token=abc", "/v1", "wss://u/agents/v1?token=abc"),
    ("ws://u/a", "/b%20c/..d/.e?q=../x", "ws://u/a/b%20c/..d/.e?q=../x"),
])
def test_the_agents_path_joins_the_upstreams_and_both_queries_are_kept(
        base: str, target: str, expected: str) -> None:
    assert relay.upstream_url(base, target) == expected


@pytest.mark.parametrize("target", [
    "/../x", "/a/../../x", "/..", "/./x", "/a/.", "/%2e%2e/x", "/%2E%2e/x", "/%252e%252e/x",
    "/..%2fx", "/..\\x", "/a%5c..%5cx", "x/y", "http://evil.example/x", "*", "/a#frag",
])
def test_a_path_that_could_climb_out_of_the_upstreams_base_is_refused(target: str) -> None:
    with pytest.raises(relay.UpgradeRefused) as refused:
        relay.upstream_url("ws://u:8080/agents", target)
    assert (refused.value.status, refused.value.reason) == (400, "bad_path")


@pytest.mark.parametrize(("host", "sni", "default", "matches"), [
    (b"demo.switch.test", "demo.switch.test", None, True),
    (b"Demo.Switch.Test.:4000", "demo.switch.test", None, True),  # case, dot and port
    (b"acme.switch.test", "demo.switch.test", None, False),  # another tenant's name
    (b"nobody.example", "demo.switch.test", None, False),
    (b"demo.switch.test:x", "demo.switch.test", None, False),  # malformed
    (None, "demo.switch.test", None, False),
    (b"anything.example", None, "demo", True),  # no SNI: the default tenant takes any Host
    (b"anything.example", None, None, False),
    (None, None, "demo", False),
])
def test_the_host_must_name_the_tenant_sni_chose(host: bytes | None, sni: str | None,
                                                  default: str | None, matches: bool) -> None:
    config = attrs.evolve(CONFIG, default_tenant=default)
    assert relay.host_matches(host, TENANT, sni, config) is matches


# --- the accept token, as the agent is answered and as the upstream must answer -----------------

RFC_KEY, RFC_ACCEPT = b"dGhlIHNhbXBsZSBub25jZQ==", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3


def test_the_agent_is_accepted_with_rfc_6455s_token_and_its_pipelined_bytes_kept() -> None:
    http = upgrade.new_request_reader()
    http.receive_data(b"GET /a HTTP/1.1\r\nHost: demo.switch.test\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      b"Sec-WebSocket-Key: " + RFC_KEY + b"\r\n\r\n\x81\x80")
    request = http.next_event()
    assert isinstance(request, h11.Request)
    offered = upgrade.parse_upgrade(request)
    data, trailing = upgrade.accept_response(http, offered, "v1")
    head = data.lower()
    assert head.startswith(b"http/1.1 101 ")
    assert b"sec-websocket-accept: " + RFC_ACCEPT.lower() + b"\r\n" in head
    assert b"sec-websocket-protocol: v1\r\n" in head
    assert trailing == b"\x81\x80"


def _answer(**fields: bytes) -> list[tuple[bytes, bytes]]:
    base = {b"upgrade": b"websocket", b"connection": b"Upgrade", b"sec-websocket-accept": RFC_ACCEPT}
    base.update({k.replace("_", "-").encode(): v for k, v in fields.items()})
    return list(base.items())


def test_the_upstreams_101_must_carry_the_token_for_our_key_and_nothing_not_offered() -> None:
    assert upstream.check_acceptance(_answer(), RFC_KEY, []) is None
    assert upstream.check_acceptance(_answer(sec_websocket_protocol=b"v2"), RFC_KEY,
                                     ["v1", "v2"]) == "v2"
    for bad in (_answer(sec_websocket_accept=b"x3JJHMbDL1EzLkh9GBhXDw=="),
                _answer(upgrade=b"h2c"), _answer(connection=b"keep-alive"),
                _answer(sec_websocket_extensions=b"permessage-deflate"),
                _answer(sec_websocket_protocol=b"v3")):
        with pytest.raises(relay.UpstreamUnavailable) as failed:
            upstream.check_acceptance(bad, RFC_KEY, ["v1"])
        assert failed.value.reason == "upstream_unavailable"
