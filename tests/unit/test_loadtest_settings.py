"""The load test's settings: agents spread over several gateways (hosts with no balancer)."""

from __future__ import annotations

from collections import Counter

from gateway.client.loadtest_settings import LoadSettings


def _settings(**more: object) -> LoadSettings:
    return LoadSettings(agents=9, gateway=("127.0.0.1", 1), enroll=("127.0.0.1", 9),
                        server_name="demo.switch.test", key_secret="swk_x", **more)  # type: ignore[arg-type]


def test_one_gateway_takes_every_agent() -> None:
    assert {_settings().gateway_for(i) for i in range(9)} == {("127.0.0.1", 1)}


def test_agents_are_spread_round_robin_over_several_gateways() -> None:
    settings = _settings(more_gateways=(("127.0.0.1", 2), ("127.0.0.1", 3)))
    spread = Counter(settings.gateway_for(i) for i in range(9))
    assert spread == {("127.0.0.1", 1): 3, ("127.0.0.1", 2): 3, ("127.0.0.1", 3): 3}
    assert "more_gateways" in settings.public()
