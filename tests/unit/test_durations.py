"""Durations and sizes as written in config."""

import pytest

from config.durations import parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("10s", 10), ("5m", 300), ("12h", 43200), ("30d", 2592000),
    ("1h30m", 5400), ("1d12h", 129600), ("1.5s", 1.5), (" 10s ", 10), (15, 15), (2.5, 2.5),
    ("0s", 0), (0, 0),
])
def test_durations_with_units_or_bare_seconds_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "ten s", "10 parsecs", "-5s", "5s10", -1, True, [1],
                                  "s", "10S", "1h 30m", float("inf"), float("nan")])
def test_malformed_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_errors_say_how_to_write_one() -> None:
    with pytest.raises(ValueError, match=r"bad duration '10 parsecs'.*\(ms, s, m, h, d\)"):
        parse_duration("10 parsecs")
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration("-5s")


@pytest.mark.parametrize(("text", "size"), [("64KiB", 65536), ("1MiB", 1 << 20), ("2GiB", 2 << 30),
                                            ("10KB", 10000), (100, 100), ("10 B", 10), ("7", 7)])
def test_sizes_with_units_or_bare_bytes_parse(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1", -1, "1.5MiB", False, 1.5, "64kib", ""])
def test_malformed_sizes_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_size_errors_say_how_to_write_one() -> None:
    with pytest.raises(ValueError, match=r"bad size 'lots'.*KiB"):
        parse_size("lots")
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_size("-1")
