"""`LogQuota`: the first lines of a window logged, the rest counted and said in one line."""

from __future__ import annotations

import asyncio

from gateway.streak import LogQuota


class Fake:
    """A quota on a clock the test moves, and the counts it said."""

    def __init__(self, quota: int, interval: float = 10.0) -> None:
        self.now = 1000.0
        self.said: list[int] = []
        self.quota = LogQuota(self.said.append, quota=quota, interval=interval, clock=self.clock)

    def clock(self) -> float:
        return self.now

    def lines(self, n: int, step: float = 0.0) -> list[bool]:
        allowed = []
        for _ in range(n):
            allowed.append(self.quota.allow())
            self.now += step
        return allowed


def test_the_first_of_a_window_are_logged_and_the_rest_said_as_a_count_when_it_ends() -> None:
    f = Fake(quota=3)  # no loop running: the next line ends a window
    assert f.lines(8, step=1.0) == [True] * 3 + [False] * 5
    assert f.said == [] and f.quota.dropped == 5
    f.now = 1010.0  # the window started at 1000
    # the count first, and it is one of the new window's 3 lines
    assert f.lines(4) == [True, True, False, False]
    assert f.said == [5] and f.quota.dropped == 2


def test_a_window_that_counted_nothing_says_nothing_and_the_next_has_its_full_quota() -> None:
    f = Fake(quota=2)
    assert f.lines(2) == [True, True]
    f.now += 10.0
    assert f.lines(2) == [True, True]  # no count line took a place
    f.now += 60.0  # quiet for a while
    assert f.lines(3) == [True, True, False]
    assert f.said == [] and f.quota.dropped == 1


def test_a_sustained_flood_on_a_quota_of_one_gets_one_line_a_window() -> None:
    f = Fake(quota=1)
    allowed = f.lines(35, step=1.0)  # a line a second, windows of 10 s from 1000
    assert [i for i, a in enumerate(allowed) if a] == [0]  # then only counts
    # at 1010, 1020, 1030: the first window's other 9, then whole windows (the count their line)
    assert f.said == [9, 10, 10]
    f.quota.close()
    assert f.said == [9, 10, 10, 5]


def test_close_says_the_count_now_and_the_next_line_opens_a_full_window() -> None:
    f = Fake(quota=2)
    assert f.lines(5) == [True, True, False, False, False]
    f.quota.close()
    assert f.said == [3] and f.quota.dropped == 0
    f.quota.close()  # nothing counted since: nothing said
    assert f.said == [3]
    f.now += 1.0  # well within what was the window
    assert f.lines(3) == [True, True, False]


async def test_in_a_loop_the_count_comes_out_without_a_further_line() -> None:
    said: list[int] = []
    quota = LogQuota(said.append, quota=2, interval=0.05)
    assert [quota.allow() for _ in range(5)] == [True, True, False, False, False]
    assert said == []
    await asyncio.sleep(0.15)
    assert said == [3]  # said by the window's timer: no line came after the flood
    # the count line opened the next window and took one of its places; it ended quietly
    await asyncio.sleep(0.1)
    assert said == [3]
    assert [quota.allow() for _ in range(3)] == [True, True, False]  # a fresh window


async def test_in_a_loop_close_says_the_count_once_and_stops_the_timer() -> None:
    said: list[int] = []
    quota = LogQuota(said.append, quota=1, interval=0.05)
    assert [quota.allow() for _ in range(3)] == [True, False, False]
    quota.close()
    assert said == [2]
    await asyncio.sleep(0.15)
    assert said == [2]  # not said again by a timer left behind
