"""What the listeners share: the source a connection is counted under, and the per-source count
of connections still in their handshake."""

from __future__ import annotations

import pytest

from gateway.listening import HandshakeSlots, source_of


@pytest.mark.parametrize(("address", "source"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("unknown", "unknown"),
])
def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64(address: str, source: str) -> None:
    assert source_of(address) == source


def test_handshake_slots_refuse_a_source_over_its_limit_and_only_that_source() -> None:
    slots = HandshakeSlots()
    assert [slots.take("a", 2) for _ in range(3)] == [True, True, False]
    assert slots.take("b", 2)
    slots.give_back("a")
    assert slots.held("a") == 1
    assert slots.take("a", 2) and not slots.take("a", 2)
    slots.give_back("a")
    slots.give_back("a")
    slots.give_back("b")
    assert (slots.held("a"), slots.held("b"), slots._counts) == (0, 0, {})
