"""A live session keeps nothing of the trust state it was admitted under once a change replaced
it: a long-lived worker holding thousands of sessions across many revocations and reloads would
otherwise keep every old state (its CAs, CRLs and revocation sets) alive. Real loopback sockets,
`websockets` as the agent, the garbage collector as the judge."""

from __future__ import annotations

import gc
import inspect
import weakref

import trio

from tests.support.gateway import Agent, Gateway, LiveAgent, provisioning_key


async def test_a_live_session_does_not_pin_the_trust_state_it_opened_under(gw: Gateway) -> None:
    with trio.fail_after(60):
        agent = Agent(gw.directory / "pki/demo-agent.pem", gw.directory / "pki/demo-agent.key", [])
        opened_under = gw.switch.current()
        old_state, old_tenants = weakref.ref(opened_under), opened_under.tenants
        del opened_under
        live = await trio.to_thread.run_sync(LiveAgent, gw, agent)
        provisioning_key(gw)  # a change in the store: a new trust state replaces the old one
        await gw.synced()
        assert gw.switch.current().tenants is not old_tenants
        gc.collect()
        assert old_state() is None, [type(r).__name__ for r in gc.get_referrers(old_state())]
        frames = [r for r in gc.get_referrers(old_tenants) if inspect.isframe(r)]
        assert frames == [], [f.f_code.co_name for f in frames]
        assert await trio.to_thread.run_sync(live.still_works)
