"""Identities that cannot be confused: a provisioned certificate cannot carry a name an
organisation certificate would be known by (no ``@`` by default), and a profile can keep a CN to
the provisioning key whose live certificate holds it (``unique_subject``). On the EST service
(request in, reply out) and end to end through the enrollment port and the gateway."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio

from enroll import pki
from gateway.client.est_client import EstClient, EstClientError, EstServer, make_csr
from tests.support.est import make_deployment
from tests.support.est_service import NOW, Env, csr, issued
from tests.support.gateway import HOST, Agent, add_acme_tenant, provisioning_key, start_gateway


@pytest.mark.parametrize("cn", ["alice@acme.test", "agent1@demo.switch.test", "a@b"])
def test_a_provisioning_key_cannot_enroll_an_email_identity_by_default(env: Env, cn: str) -> None:
    for op in ("simpleenroll", "serverkeygen"):
        reply = env.call(op, csr(cn)[0])
        assert (reply.status, reply.result) == (400, "subject_not_allowed"), op
    assert env.issuance.list_certificates("acme") == []


def _keys(env: Env, profile: str | None = "unique") -> tuple[str, str]:
    """Two keys of tenant acme under ``profile`` (the fixture's own key revoked: three live keys
    at most)."""
    env.authority.revoke_key("acme", "Fleet", reason="unused", confirm="Fleet", actor="t")
    _, first = env.authority.generate_key("acme", "First", actor="t", profile=profile)
    _, second = env.authority.generate_key("acme", "Second", actor="t", profile=profile)
    return first, second


def test_a_second_key_cannot_take_a_cn_another_keys_live_certificate_holds(env: Env) -> None:
    first, second = _keys(env)
    env.secret = first
    body, key = csr("agent-7")
    cert = issued(env.call("simpleenroll", body))
    env.secret = second
    for op in ("simpleenroll", "serverkeygen", "serverkeygen-pkcs12"):
        reply = env.call(op, csr("agent-7")[0])
        assert (reply.status, reply.result) == (409, "subject_taken"), op
        assert reply.body == b"409 subject_taken\n"
    assert issued(env.call("simpleenroll", csr("agent-8")[0]))  # another name is free
    # The holder's own key renews, by certificate or by key, with a new key pair or the same.
    env.secret = first
    renewed = issued(env.call("simplereenroll", csr("agent-7", key=key)[0], auth=None,
                              chain=[cert]))
    assert issued(env.call("simpleenroll", csr("agent-7")[0]))
    assert [r.subject for r in env.issuance.list_certificates("acme")].count(
        "CN=agent-7,OU=acme") == 3
    assert renewed.subject == cert.subject


def test_a_cn_is_free_again_once_its_holders_certificates_are_revoked_expired_or_its_key_revoked(
        env: Env) -> None:
    first, second = _keys(env)
    env.secret = first
    issued(env.call("simpleenroll", csr("agent-7")[0]))
    env.secret = second
    # Expired (at the time of the request): free.
    late = NOW + dt.timedelta(days=31)
    assert env.call("simpleenroll", csr("agent-7")[0], now=late).status == 200
    assert env.call("simpleenroll", csr("agent-9")[0]).status == 200  # held by Second now
    # Revoked: free.
    env.secret = first
    assert env.call("simpleenroll", csr("agent-9")[0]).result == "subject_taken"
    env.secret = second
    for record in env.issuance.list_certificates("acme"):
        if record.subject == "CN=agent-9,OU=acme":
            env.issuance.revoke_certificate(record.serial, reason="lost", actor="t")
    env.secret = first
    assert env.call("simpleenroll", csr("agent-9")[0]).status == 200
    # Its key revoked (its certificates connect no more): free.
    _, third = env.authority.generate_key("acme", "Third", actor="t", profile="unique")
    env.secret = third
    assert env.call("simpleenroll", csr("agent-9")[0]).result == "subject_taken"
    env.authority.revoke_key("acme", "First", reason="leak", confirm="First", actor="t")
    assert env.call("simpleenroll", csr("agent-9")[0]).status == 200


def test_without_unique_subject_two_keys_may_share_a_cn(env: Env) -> None:
    first, second = _keys(env, profile=None)
    for secret in (first, second):
        env.secret = secret
        assert env.call("simpleenroll", csr("agent-7")[0]).status == 200


def test_an_approved_request_for_a_cn_held_meanwhile_is_refused_when_repeated(env: Env) -> None:
    first, _ = _keys(env)
    _, gated = env.authority.generate_key("acme", "Gated", actor="t", profile="gated-unique")
    env.secret = gated
    body, _ = csr("agent-7")
    assert env.call("simpleenroll", body).status == 202
    env.secret = first
    issued(env.call("simpleenroll", csr("agent-7")[0]))  # taken while the request waits
    [pending] = env.issuance.list_requests("acme")
    env.issuance.approve(pending.id, actor="admin")
    env.secret = gated
    reply = env.call("simpleenroll", body)
    assert (reply.status, reply.result) == (409, "subject_taken")
    assert [r.subject for r in env.issuance.list_certificates("acme")] == ["CN=agent-7,OU=acme"]


async def test_end_to_end_identities_from_the_two_sources_stay_apart(tmp_path: Path) -> None:
    """Over the network: the enrollment port refuses a provisioning key an e-mail CN, and (the
    profile asking for unique subjects) a second key the CN the first key's agent holds; a
    provisioned agent and an organisation agent reach the upstream with identities the upstream
    tells apart by X-Switch-Trust and X-Switch-Key-Id."""
    directory = tmp_path / "d"
    make_deployment(directory, profile_extra="\nunique_subject = true")
    add_acme_tenant(directory)
    async with trio.open_nursery() as nursery:
        gw = await start_gateway(nursery, directory)
        secret = provisioning_key(gw)
        other = provisioning_key(gw, "Other")
        await gw.synced()
        server = EstServer("127.0.0.1", gw.ports["enroll"], HOST, ca_file=gw.ca_file)
        async with EstClient(server) as client:
            with pytest.raises(EstClientError) as refused:
                await client.simpleenroll(make_csr("agent1@demo.switch.test", pki.generate_key()),
                                          secret)
            assert "400" in str(refused.value) and "subject_not_allowed" in str(refused.value)
            provisioned = await gw.enroll(secret, "agent1", tmp_path)
            with pytest.raises(EstClientError) as taken:
                await client.simpleenroll(make_csr("agent1", pki.generate_key()), other)
            assert "409" in str(taken.value) and "subject_taken" in str(taken.value)
        organisation = Agent(directory / "pki/demo-agent.pem", directory / "pki/demo-agent.key", [])
        seen = []
        for agent in (provisioned, organisation):
            ws = await trio.to_thread.run_sync(gw.connect, agent)
            await trio.to_thread.run_sync(ws.close)
            _, headers = gw.echo.requests[-1]
            seen.append((headers["x-switch-identity"], headers["x-switch-trust"],
                         headers.get("x-switch-key-id")))
        authority = gw.authority()
        key_id = authority.get_key("demo", "Fleet").id
        authority.close()
        assert seen == [("agent1", "provisioned", key_id),
                        ("agent1@demo.switch.test", "organisation", None)]
        nursery.cancel_scope.cancel()
