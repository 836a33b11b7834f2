from enroll.ratelimit import FailureLimiter


def test_source_is_refused_after_max_failures_within_the_window() -> None:
    limiter = FailureLimiter(max_failures=3, window_s=60)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("10.0.0.1", t) is None
        limiter.record_failure("10.0.0.1", t)
    assert limiter.retry_after("10.0.0.1", 3.0) == 57
    assert limiter.retry_after("10.0.0.2", 3.0) is None


def test_refusal_ends_when_the_oldest_failure_leaves_the_window() -> None:
    limiter = FailureLimiter(max_failures=2, window_s=10)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("a", 5.0)
    assert limiter.retry_after("a", 9.0) == 1
    assert limiter.retry_after("a", 10.5) is None


def test_memory_is_bounded_by_max_sources() -> None:
    limiter = FailureLimiter(max_failures=1, window_s=60, max_sources=100)
    for i in range(1000):
        limiter.record_failure(f"src{i}", float(i) / 1000)
    assert len(limiter) == 100
    assert limiter.retry_after("src999", 1.0) is not None
    assert limiter.retry_after("src0", 1.0) is None


def test_retry_after_is_at_least_one_second() -> None:
    limiter = FailureLimiter(max_failures=1, window_s=1)
    limiter.record_failure("a", 0.0)
    assert limiter.retry_after("a", 0.9999) == 1


def test_the_rule_counts_only_failures_inside_the_window() -> None:
    from enroll.ratelimit import retry_after

    assert retry_after([1.0, 2.0, 3.0, 4.0], 10.0) is None  # four of five
    assert retry_after([1.0, 2.0, 3.0, 4.0, 5.0], 10.0) == 51  # until the first leaves
    assert retry_after([0.5, 1.0, 2.0, 3.0, 4.0, 5.0], 10.0) == 51  # the oldest five counted
    assert retry_after([1.0, 2.0, 3.0, 4.0, 5.0], 61.5) is None  # the first left the window
