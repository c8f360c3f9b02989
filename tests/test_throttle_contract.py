"""The login throttle's contract, exactly: the Throttled retry_after a source is told, refunds,
the site ceiling's rate and cap, fair order, cancellation, and which callers are forgotten.

The clock and sleep are injected (no real waiting); rates are chosen so that their periods are
exact in binary floating point, so waits can be compared exactly."""

from __future__ import annotations

import asyncio

import pytest

from cpcp.errors import Throttled
from cpcp.throttle import LoginThrottle

from .test_throttle import FakeTime, allowed, make, right, wrong


async def retry_after(throttle: LoginThrottle, caller: str) -> int:
    with pytest.raises(Throttled) as refused:
        await wrong(throttle, caller)
    return refused.value.retry_after


async def settle(*tasks: asyncio.Task[object]) -> bool:
    """Let the loop run a while (no time passes); True if all ``tasks`` finished."""
    for _ in range(50):
        await asyncio.sleep(0)
    return all(t.done() for t in tasks)


# -- budgets and retry_after -------------------------------------------------------------------


async def test_retry_after_is_the_whole_seconds_until_the_next_token_rounded_up() -> None:
    time = FakeTime()
    throttle = make(time, caller_per_hour=3600 / 64)  # one token per 64 s
    for _ in range(3):
        await wrong(throttle, "a")
    assert await retry_after(throttle, "a") == 64
    time.now += 32.25
    assert await retry_after(throttle, "a") == 32  # 31.75 s to go: rounded up, not down
    time.now += 31.25
    assert await retry_after(throttle, "a") == 1  # half a second to go: still at least 1
    time.now += 0.5
    assert await allowed(throttle, "a")
    assert await retry_after(throttle, "a") == 64


async def test_a_caller_past_its_queue_is_told_to_retry_after_one_second() -> None:
    time = FakeTime()
    throttle = make(time, queue_per_caller=1, caller_burst=5)
    async with throttle.attempt("a") as attempt:
        assert await retry_after(throttle, "a") == 1  # its budget has 4 more tries
        attempt.right()


async def test_a_right_codename_returns_exactly_the_one_token_it_took() -> None:
    time = FakeTime()
    throttle = make(time)
    await wrong(throttle, "a")
    await wrong(throttle, "a")
    await right(throttle, "a")  # took the last token, gave it back
    assert [await allowed(throttle, "a") for _ in range(2)] == [True, False]


async def test_a_dropped_connection_costs_a_token_and_counts_as_a_wrong_try() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15)  # the site ceiling refills one per 4 s
    for i in range(14):
        await wrong(throttle, f"g{i}")  # 14 fresh wrong tries: one site token left
    async with throttle.attempt("a") as attempt, attempt.hashing():
        pass  # and the connection drops: neither right() nor wrong()
    assert [await allowed(throttle, "a") for _ in range(3)] == [True, True, False]
    # "a" is now held to the ceiling, and its dropped hash spent the last site token
    assert time.now - 1000.0 == 8.0


async def test_a_wrong_codename_waits_the_failure_delay_and_a_right_one_does_not() -> None:
    time = FakeTime()
    throttle = make(time, failure_delay=2.5)
    await right(throttle, "a")
    assert time.now == 1000.0
    await wrong(throttle, "a")
    assert time.now == 1002.5


# -- the site ceiling --------------------------------------------------------------------------


async def drain_site(throttle: LoginThrottle, tokens: int) -> None:
    for i in range(tokens):
        await wrong(throttle, f"drain{i}")  # each caller's first wrong try spends a site token


async def test_the_site_ceiling_refills_at_its_rate_and_waits_by_one_sleep() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15, caller_burst=100, queue_per_caller=100)
    await drain_site(throttle, 15)
    assert time.now == 1000.0
    time.slept.clear()
    await wrong(throttle, "drain0")  # failed before: waits for the next site token
    assert time.now == 1004.0
    assert [s for s in time.slept if s] == [4.0]  # slept until it was due, no polling
    await wrong(throttle, "drain1")
    assert time.now == 1008.0


async def test_the_site_ceiling_saves_up_to_one_minute_of_tokens_only() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15, caller_burst=100, queue_per_caller=100)
    await drain_site(throttle, 15)
    time.now += 3600
    started = time.now
    for _ in range(15):
        await wrong(throttle, "drain0")
    assert time.now == started
    await wrong(throttle, "drain0")
    assert time.now == started + 4.0


async def test_two_paced_tries_wait_one_token_each_with_one_timer() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15, concurrency=1)
    await drain_site(throttle, 15)
    time.slept.clear()
    done: list[tuple[str, float]] = []

    async def one(caller: str) -> None:
        await wrong(throttle, caller)
        done.append((caller, time.now))

    await asyncio.gather(one("drain0"), one("drain1"))
    assert [caller for caller, _ in done] == ["drain0", "drain1"]  # served longest ago first
    assert done[-1][1] == 1008.0
    assert [s for s in time.slept if s] == [4.0, 4.0]


async def test_a_right_codename_gives_back_the_site_token_it_was_paced_by() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15, caller_burst=100, queue_per_caller=100)
    await drain_site(throttle, 14)
    await wrong(throttle, "a")  # fresh: spends the last site token
    time.now += 4  # one token again
    started = time.now
    await right(throttle, "a")  # paced: takes it, and gives it back being right
    await wrong(throttle, "a")  # so this one needs no waiting
    assert time.now == started
    await wrong(throttle, "a")
    assert time.now == started + 4


async def test_a_fresh_caller_passes_failed_callers_waiting_on_the_ceiling() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15, concurrency=1)
    await drain_site(throttle, 15)
    paced = asyncio.create_task(wrong(throttle, "drain0"))
    await asyncio.sleep(0)  # waiting for a site token
    await right(throttle, "fresh")
    assert not paced.done()
    await paced


async def test_right_codenames_do_not_put_a_caller_under_the_ceiling() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15)
    await drain_site(throttle, 15)
    for _ in range(3):
        await right(throttle, "source")
    assert time.now == 1000.0


async def test_one_wrong_try_of_a_fresh_caller_spends_one_site_token_not_two() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15, caller_burst=100, queue_per_caller=100)
    await drain_site(throttle, 14)
    await wrong(throttle, "a")
    time.now += 4
    started = time.now
    await wrong(throttle, "a")  # the refilled token is there
    assert time.now == started


async def test_a_new_codenames_hash_needs_no_token_and_no_site_ceiling() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15, caller_burst=1)
    await drain_site(throttle, 14)
    await wrong(throttle, "a")  # its budget and the site ceiling are spent
    assert not await allowed(throttle, "a")
    async with throttle.hashing("a"):
        pass
    assert time.now == 1000.0


# -- fair order and cancellation ---------------------------------------------------------------


async def test_slots_go_round_robin_between_waiting_callers() -> None:
    time = FakeTime()
    throttle = make(time, concurrency=1, queue_per_caller=3)
    order: list[str] = []

    async def one(caller: str) -> None:
        async with throttle.attempt(caller) as attempt:
            async with attempt.hashing():
                order.append(caller)
                await asyncio.sleep(0)
            attempt.right()

    async with throttle.hashing("holder"):
        tasks = [asyncio.create_task(one(c)) for c in "aaabbbccc"]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert "".join(order) == "abcabcabc"


async def hashes_at_once(throttle: LoginThrottle, tries: int) -> int:
    """How many of ``tries`` parallel hashes of fresh callers get a slot at the same time."""
    gate = asyncio.Event()
    inside = peak = 0

    async def one(caller: str) -> None:
        nonlocal inside, peak
        async with throttle.hashing(caller):
            inside += 1
            peak = max(peak, inside)
            await gate.wait()
            inside -= 1

    tasks = [asyncio.create_task(one(f"h{i}")) for i in range(tries)]
    await settle()
    gate.set()
    if not await settle(*tasks):  # a lost slot: do not hang, report what ran
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return -peak
    return peak


async def test_a_cancelled_waiting_try_gives_its_turn_away_and_takes_no_slot() -> None:
    time = FakeTime()
    throttle = make(time, concurrency=1)
    async with throttle.hashing("holder"):
        waiting = asyncio.create_task(right(throttle, "b"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert await hashes_at_once(throttle, 3) == 1  # neither a slot lost nor one too many


async def test_a_try_cancelled_just_after_getting_its_slot_hands_it_back() -> None:
    time = FakeTime()
    throttle = make(time, concurrency=1)
    async with throttle.hashing("holder"):
        waiting = asyncio.create_task(right(throttle, "b"))
        await asyncio.sleep(0)
    waiting.cancel()  # the slot was handed to it, but it has not run yet
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await hashes_at_once(throttle, 3) == 1


# -- forgetting callers ------------------------------------------------------------------------


async def test_a_full_bucket_is_forgotten_after_exactly_caller_idle() -> None:
    time = FakeTime()
    throttle = make(time)
    await wrong(throttle, "a")  # full again a minute later
    time.now += 599.5
    await right(throttle, "b")
    assert throttle.callers_tracked() == 2
    time.now += 0.5
    await right(throttle, "c")
    assert throttle.callers_tracked() == 2  # "a" is gone, "b" is not idle yet


async def test_an_idle_bucket_that_is_not_full_is_kept() -> None:
    time = FakeTime()
    throttle = make(time, caller_per_hour=1)
    for _ in range(3):
        await wrong(throttle, "a")
    time.now += 3600  # idle, one token back of three
    await right(throttle, "b")
    assert throttle.callers_tracked() == 2
    assert [await allowed(throttle, "a") for _ in range(2)] == [True, False]


async def test_the_caller_bound_is_exact_and_drops_the_least_recently_seen() -> None:
    time = FakeTime()
    throttle = make(time, max_callers=2, caller_burst=1)
    await wrong(throttle, "a")
    await wrong(throttle, "b")
    assert not await allowed(throttle, "a")  # "a" seen again: "b" is now the oldest
    await wrong(throttle, "c")  # drops "b"
    assert throttle.callers_tracked() == 2
    assert not await allowed(throttle, "a")
    assert await allowed(throttle, "b")  # forgotten, so a full bucket again


async def test_the_caller_bound_never_drops_a_caller_with_a_try_in_flight() -> None:
    time = FakeTime()
    throttle = make(time, max_callers=2, caller_burst=1)
    async with throttle.attempt("a") as attempt:
        for caller in "bcd":
            await wrong(throttle, caller)
        await attempt.wrong()
    assert not await allowed(throttle, "a")


async def test_many_callers_are_held_to_exactly_max_callers() -> None:
    time = FakeTime()
    throttle = make(time, max_callers=100)
    for i in range(300):
        await wrong(throttle, f"c{i}")
    assert throttle.callers_tracked() == 100


async def test_a_paced_try_waits_only_the_rest_of_a_partly_refilled_token() -> None:
    time = FakeTime()
    throttle = make(time, site_per_minute=15)
    await drain_site(throttle, 15)
    time.now += 3.5  # seven eighths of a token back
    await wrong(throttle, "drain0")
    assert time.now == 1004.0  # half a second, not a whole one, and not a whole period


async def test_every_slot_comes_back_after_use() -> None:
    time = FakeTime()
    throttle = make(time, concurrency=3)
    inside = 0

    async def one(caller: str, gate: asyncio.Event) -> None:
        nonlocal inside
        async with throttle.hashing(caller):
            inside += 1
            await gate.wait()
            inside -= 1

    for _ in range(2):
        gate = asyncio.Event()
        tasks = [asyncio.create_task(one(c, gate)) for c in "abc"]
        await settle()
        assert inside == 3  # a slot handed back as "one free" instead of "one more" fails here
        gate.set()
        await asyncio.gather(*tasks)


async def test_waiting_for_a_busy_slot_sets_no_timer() -> None:
    time = FakeTime()
    throttle = make(time, concurrency=1)
    async with throttle.hashing("holder"):
        waiting = asyncio.create_task(right(throttle, "b"))
        await settle()
        assert time.slept == []  # a slot comes back by release, not by waking up to look
    await waiting
