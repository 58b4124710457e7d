"""Token buckets and refusal windows over a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qledger.governance.flood_control import Refusal, RefusalWindows, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=4.0, clock=clock)
    assert [buckets.take("peer") for _ in range(4)] == [0.0] * 4
    assert buckets.take("peer") == 0.5 and buckets.wait("peer") == 0.5
    assert buckets.take("other") == 0.0  # buckets are per key
    clock.now += 0.5
    assert buckets.take("peer") == 0.0 and buckets.take("peer") > 0
    clock.now += 100
    assert [buckets.take("peer") for _ in range(5)].count(0.0) == 4  # refilled to the burst, no more


@given(times=st.lists(st.floats(0, 10, allow_nan=False), max_size=200), rate=st.floats(0.5, 50),
       burst=st.integers(1, 20))
def test_no_more_calls_pass_than_the_burst_and_the_rate_allow(times: list[float], rate: float,
                                                              burst: int) -> None:
    clock = Clock()
    start = clock.now
    buckets = TokenBuckets(rate, float(burst), clock=clock)
    passed = 0
    for t in sorted(times):
        clock.now = start + t
        passed += buckets.take("k") == 0.0
    elapsed = max(times, default=0.0)
    assert passed <= burst + rate * elapsed + 1e-9


def test_a_bucket_table_forgets_full_buckets_when_it_is_full() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=1.0, clock=clock, max_keys=10)
    for i in range(10):
        buckets.take(f"k{i}")
    clock.now += 5  # all refilled: nothing worth keeping
    buckets.take("new")
    assert buckets.take("k0") == 0.0 and len(buckets._buckets) <= 3


def test_refusals_are_recorded_once_per_window_and_the_rest_summarised() -> None:
    clock = Clock()
    windows = RefusalWindows(60, clock=clock)
    flood = Refusal("access_denied", "10.0.0.1", "anonymous", "GetRun")
    other = Refusal("access_denied", "10.0.0.2", "anonymous", "GetRun")
    assert windows.note(flood, "r1") and not windows.note(flood, "r2") and not windows.note(flood, "r3")
    assert windows.note(other, "r") and windows.due() == []  # the windows are still open
    clock.now += 61
    [summary] = windows.due()  # `other` had nothing after its first: no summary
    assert (summary.refusal, summary.count, summary.reason) == (flood, 2, "r3")
    assert summary.window_end - summary.window_start == 60
    assert windows.note(flood, "r4")  # a new window starts with an entry of its own
    assert not windows.note(flood, "r5")
    clock.now += 61
    assert windows.note(flood, "r6")  # the ended window is kept until `due`
    assert [s.count for s in windows.due(flush_all=True)] == [1]
    assert windows.due(flush_all=True) == []
