import pytest

from config.durations import parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("10s", 10), ("5m", 300), ("12h", 43200), ("30d", 2592000),
    ("1h30m", 5400), (15, 15), (2.5, 2.5), ("0s", 0),
])
def test_ok_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "ten s", "10 parsecs", "-5s", "5s10", -1, True, [1], "s"])
def test_fail_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [("64KiB", 65536), ("1MiB", 1 << 20), (100, 100), ("10 B", 10)])
def test_ok_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1", -1, "1.5MiB", False])
def test_fail_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
