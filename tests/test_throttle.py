"""The login throttle alone, with its clock injected: per-caller budgets that refill at the
configured rate and no faster, atomic reservation, bounded hashing, fair turns between callers,
and the site ceiling that slows callers who already failed but never a fresh one."""

from __future__ import annotations

import asyncio

import pytest

from cpcp.errors import Throttled
from cpcp.throttle import LoginThrottle


class FakeTime:
    """A clock the test moves; ``sleep`` moves it too, yields to the loop, and is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def make(time: FakeTime, **overrides: float) -> LoginThrottle:
    options: dict[str, float] = {
        "caller_burst": 3, "caller_per_hour": 60, "site_per_minute": 1000, "concurrency": 2,
        "queue_per_caller": 2, "max_callers": 1000, "caller_idle": 600, "failure_delay": 0,
    }
    options.update(overrides)
    return LoginThrottle(**options, clock=time, sleep=time.sleep)  # type: ignore[arg-type]


async def wrong(throttle: LoginThrottle, caller: str, *, hash_: bool = True) -> None:
    async with throttle.attempt(caller) as attempt:
        if hash_:
            async with attempt.hashing():
                await asyncio.sleep(0)
        await attempt.wrong()


async def right(throttle: LoginThrottle, caller: str) -> None:
    async with throttle.attempt(caller) as attempt:
        async with attempt.hashing():
            await asyncio.sleep(0)
        attempt.right()


async def allowed(throttle: LoginThrottle, caller: str) -> bool:
    try:
        await wrong(throttle, caller)
    except Throttled:
        return False
    return True


async def test_a_spent_budget_refills_one_try_per_interval_and_no_faster() -> None:
    time = FakeTime()
    throttle = make(time)  # 3 at once, one more per minute
    assert [await allowed(throttle, "a") for _ in range(4)] == [True, True, True, False]
    with pytest.raises(Throttled) as refused:
        await wrong(throttle, "a")
    assert 55 <= refused.value.retry_after <= 60
    time.now += 30
    assert not await allowed(throttle, "a")  # half an interval: nothing yet (a 4x rate would give 2)
    time.now += 30
    assert await allowed(throttle, "a")  # a bucket that never refills fails here
    assert not await allowed(throttle, "a")


async def test_a_long_quiet_time_gives_back_the_burst_only() -> None:
    time = FakeTime()
    throttle = make(time)
    assert await allowed(throttle, "a")
    time.now += 10 * 3600  # an uncapped bucket (or one refilled from start-up) would allow ~600
    assert [await allowed(throttle, "a") for _ in range(4)] == [True, True, True, False]
    time.now += 10 * 3600
    assert [await allowed(throttle, "a") for _ in range(4)] == [True, True, True, False]


async def test_one_callers_spent_budget_does_not_touch_another_caller() -> None:
    time = FakeTime()
    throttle = make(time)
    assert [await allowed(throttle, "jammer") for _ in range(5)] == [True, True, True, False, False]
    assert await allowed(throttle, "source")


async def test_a_right_codename_gets_its_token_back() -> None:
    time = FakeTime()
    throttle = make(time)
    for _ in range(10):
        await right(throttle, "a")
    assert [await allowed(throttle, "a") for _ in range(4)] == [True, True, True, False]


async def test_parallel_wrong_tries_cannot_overspend_the_budget() -> None:
    time = FakeTime()
    throttle = make(time, queue_per_caller=50, concurrency=50)
    hashed = 0

    async def one() -> str:
        nonlocal hashed
        try:
            async with throttle.attempt("a") as attempt:
                await asyncio.sleep(0)  # a check-then-spend throttle lets every task past here
                async with attempt.hashing():
                    hashed += 1
                    await asyncio.sleep(0)
                await attempt.wrong()
        except Throttled:
            return "throttled"
        return "wrong"

    answers = await asyncio.gather(*(one() for _ in range(20)))
    assert hashed == 3 and answers.count("wrong") == 3 and answers.count("throttled") == 17


async def test_no_more_hashes_run_at_once_than_the_concurrency() -> None:
    time = FakeTime()
    throttle = make(time, concurrency=2)
    running = peak = 0

    async def one(caller: str) -> None:
        nonlocal running, peak
        async with throttle.attempt(caller) as attempt:
            async with attempt.hashing():
                running += 1
                peak = max(peak, running)
                for _ in range(3):
                    await asyncio.sleep(0)
                running -= 1
            attempt.right()

    await asyncio.gather(*(one(f"c{i}") for i in range(12)))
    assert peak == 2


async def test_a_caller_with_fifty_queued_tries_delays_a_fresh_caller_by_one_slot_at_most() -> None:
    time = FakeTime()
    throttle = make(time, concurrency=1, queue_per_caller=50, caller_burst=50)
    order: list[str] = []
    gate = asyncio.Event()

    async def one(caller: str) -> None:
        async with throttle.attempt(caller) as attempt:
            async with attempt.hashing():
                order.append(caller)
                await gate.wait()
            attempt.right()

    flood = [asyncio.create_task(one("flood")) for _ in range(50)]
    await asyncio.sleep(0)
    assert order == ["flood"]  # one of the flood's tries holds the only slot
    fresh = asyncio.create_task(one("fresh"))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(fresh, *flood)
    assert order.index("fresh") == 1  # next in turn, not after the 49 queued ones


async def test_a_callers_tries_beyond_its_queue_are_refused_at_once_and_refunded() -> None:
    time = FakeTime()
    throttle = make(time, concurrency=1, queue_per_caller=2, caller_burst=5)
    gate = asyncio.Event()

    async def one() -> str:
        try:
            async with throttle.attempt("a") as attempt:
                async with attempt.hashing():
                    await gate.wait()
                attempt.right()
        except Throttled:
            return "throttled"
        return "in"

    tasks = [asyncio.create_task(one()) for _ in range(6)]
    await asyncio.sleep(0)
    gate.set()
    assert sorted(await asyncio.gather(*tasks)) == ["in", "in"] + ["throttled"] * 4
    assert [await allowed(throttle, "a") for _ in range(6)] == [True] * 5 + [False]


async def test_garbage_spends_its_callers_budget_only_not_the_site_ceiling() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=2, caller_burst=5)
    for _ in range(5):
        await wrong(throttle, "garbage", hash_=False)
    assert not await allowed(throttle, "garbage")
    await wrong(throttle, "guesser")  # fresh: not paced, spends one site token
    started = time.now
    await wrong(throttle, "guesser")  # paced: the second site token is still there
    assert time.now == started


async def test_callers_that_failed_are_slowed_by_the_site_ceiling_but_a_fresh_caller_is_not() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=6, caller_burst=100, queue_per_caller=100,
                    concurrency=1)  # one site token per 10 s, 6 at once
    for i in range(6):
        await wrong(throttle, f"g{i}")  # first wrong try of each: spends the site's tokens
    started = time.now
    await wrong(throttle, "g0")  # paced: waits for a token (10 s), is not refused
    assert 9.9 <= time.now - started <= 10.1
    started = time.now
    await right(throttle, "fresh")
    assert time.now == started


async def test_memory_stays_bounded_and_idle_full_buckets_are_forgotten() -> None:
    time = FakeTime()
    throttle = make(time, max_callers=100)
    for i in range(500):
        await wrong(throttle, f"c{i}")
    assert throttle.callers_tracked() <= 100
    time.now += 3 * 60 + 600  # refilled (3 tries at 1/min) and idle for caller_idle
    await right(throttle, "newcomer")
    assert throttle.callers_tracked() == 1
