"""BoundedQueue: bounds, policies, the resume mark, discard counting and logging.

Items here are ``(value, size)`` pairs; the queue learns their size from ``size_of``.
"""

from __future__ import annotations

import logging
import threading

import pytest

from yoton.queues import BLOCK, DROP_NEW, DROP_OLD, BoundedQueue, Policy


def make(**kwargs) -> BoundedQueue:
    return BoundedQueue(size_of=lambda item: item[1], **kwargs)


def _fill(q, values, size=10):
    return [q.put((v, size)) for v in values]


def values(items) -> list:
    return [v for v, _ in items]


def test_drop_old_keeps_the_newest_within_both_bounds():
    q = make(max_items=3, max_bytes=None, policy=DROP_OLD)
    _fill(q, range(5))
    assert values(q.take()) == [2, 3, 4]
    assert q.discarded == 2
    q = make(max_items=None, max_bytes=25, policy=DROP_OLD)
    _fill(q, range(5))  # 10 bytes each: two fit
    assert values(q.take()) == [3, 4] and q.discarded == 3 and q.bytes == 0


def test_drop_new_keeps_the_oldest():
    q = make(max_items=3, policy=DROP_NEW)
    assert _fill(q, range(5)) == [True, True, True, False, False]
    assert values(q.take()) == [0, 1, 2] and q.discarded == 2


def test_one_item_always_fits_an_empty_queue():
    for policy in Policy:
        q = make(max_bytes=10, policy=policy)
        assert q.put(("big", 1000))
        assert q.bytes == 1000
        assert values(q.take()) == ["big"]


@pytest.mark.parametrize("policy", [DROP_OLD, DROP_NEW, BLOCK])
def test_put_many_follows_the_policy_like_single_puts(policy):
    single = make(max_items=4, max_bytes=35, policy=policy)
    batch = make(max_items=4, max_bytes=35, policy=policy)
    single.put(("a", 10))
    batch.put(("a", 10))
    items = list(zip("bcdef", [10, 1, 10, 1, 10]))
    for item in items:
        single.put(item)
    dropped = batch.put_many(items)
    assert batch.take() == single.take()
    assert batch.discarded == single.discarded == dropped
    assert batch.bytes == single.bytes == 0


def test_put_many_takes_the_total_the_caller_knows():
    q = make(max_bytes=100, policy=BLOCK)
    q.put_many([("a", 10), ("b", 20)], total=30)
    assert q.bytes == 30 and not q.full
    q.put_many([("c", 80)], total=80)
    assert q.full and q.discarded == 0


@pytest.mark.parametrize("policy", [BLOCK, DROP_OLD, DROP_NEW])
@pytest.mark.parametrize("max_items, max_bytes", [(None, 100), (5, None), (5, 100)])
def test_extend_is_put_many_telling_whether_the_queue_is_full(policy, max_items, max_bytes):
    # The send path's one call: the same items, bytes, discards and fullness as
    # put_many followed by a look at `full`, batch after batch.
    batches = [[("a", 30)], [("b", 30), ("c", 30)], [("d", 20), ("e", 1)], [("f", 40), ("g", 1)], [("h", 1)]]
    one, two = (make(max_items=max_items, max_bytes=max_bytes, policy=policy) for _ in range(2))
    said = []
    for batch in batches:
        total = sum(size for _, size in batch)
        one.put_many(batch, total)
        said.append(two.extend(batch, total))
        assert said[-1] is one.full
        assert (list(two), two.bytes, two.discarded) == (list(one), one.bytes, one.discarded)
        if batch[0][0] == "d":
            one.take(4), two.take(4)  # (drained below the resume mark: not full any more)
    assert said == [False, False, True, False, False] or policy is not BLOCK  # (both answers were met)


def test_block_takes_everything_and_reports_full_until_the_resume_mark():
    rooms = []
    q = make(max_items=None, max_bytes=100, policy=BLOCK, on_room=lambda: rooms.append(len(q)))
    for i in range(15):  # 150 bytes: over the bound, nothing dropped
        q.put((i, 10))
    assert len(q) == 15 and q.discarded == 0 and q.full and not q.has_room(10)
    q.take(7)  # 80 bytes left: under the bound but over the resume mark (75)
    assert q.full and not q.has_room(1) and rooms == []
    q.popleft()  # 70 bytes: drained to the mark
    assert rooms == [7] and not q.full and q.has_room(30) and not q.has_room(31)


def test_a_producer_that_found_no_room_is_told_when_it_may_look_again():
    rooms = []
    q = make(max_bytes=100, policy=BLOCK, on_room=lambda: rooms.append(q.bytes))
    for i in range(10):
        q.put((i, 10))  # exactly at the bound: not over it
    assert not q.full
    assert not q.has_room(50)  # a producer with 50 bytes must wait ...
    q.take(2)  # 80 bytes: still over the resume mark
    assert rooms == []
    q.take(1)
    assert rooms == [70]  # ... and is told at the mark, not only when it runs empty


def test_on_room_only_for_a_queue_that_was_full():
    rooms = []
    q = make(max_bytes=100, policy=BLOCK, on_room=lambda: rooms.append(1))
    q.put((1, 10))
    q.put((2, 10))
    q.popleft()
    q.popleft()
    assert rooms == []  # (never full: nobody waits, nobody is told)
    q.put((3, 150))
    q.put((4, 10))
    assert q.full
    q.take()
    assert rooms == [1]


def test_take_with_a_byte_budget_takes_at_least_one():
    q = make()
    for i, size in enumerate([30, 30, 30, 500, 10]):
        q.put((i, size))
    assert values(q.take(10, max_bytes=70)) == [0, 1]
    assert values(q.take(10, max_bytes=70)) == [2]
    assert values(q.take(10, max_bytes=70)) == [3]  # (larger than the budget, alone)
    assert values(q.take(10, max_bytes=70)) == [4] and q.bytes == 0


def test_take_hands_the_items_to_a_sink_before_they_leave():
    q = make()
    q.put((0, 10))
    q.put((1, 20))
    q.put((2, 30))
    seen = []
    sink = lambda items, nbytes: seen.append((values(items), nbytes, len(q)))  # noqa: E731
    q.take(2, sink=sink)  # a batch of a longer queue
    # (the queue still held them when the sink got them, and told their size)
    assert seen == [([0, 1], 30, 3)] and q.bytes == 30
    q.take(sink=sink)  # all that is left
    assert seen[1:] == [([2], 30, 1)] and q.bytes == 0 and not q


def test_discards_are_logged_once_per_episode(caplog):
    q = make(max_items=2, policy=DROP_NEW, name="test queue")
    with caplog.at_level(logging.WARNING, logger="yoton"):
        _fill(q, range(10))
        assert q.discarded == 8
        assert len([r for r in caplog.records if "test queue is full" in r.message]) == 1
        q.take()  # drained: the episode is over
        _fill(q, range(10))
        assert len([r for r in caplog.records if "test queue is full" in r.message]) == 2
        assert "discarding the newest" in caplog.records[-1].message


def test_a_logging_handler_may_put_into_the_queue_whose_discard_it_logs():
    # A pyzo kernel's stderr is a FileWrapper: Python's last-resort handler writes
    # yoton's own warnings there, and those sends pass through a context's queues.
    q = make(max_items=2, policy=DROP_OLD, name="reentered queue")
    handled = []

    class Resend(logging.Handler):
        def emit(self, record):
            if "reentered queue" in record.getMessage():
                handled.append(q.put(("from the handler", 1)))

    handler = Resend()
    logger = logging.getLogger("yoton")
    logger.addHandler(handler)
    try:
        worker = threading.Thread(target=_fill, args=(q, range(5)), daemon=True)
        worker.start()
        worker.join(5.0)
        assert not worker.is_alive(), "put() deadlocked: the discard was logged with the queue locked"
    finally:
        logger.removeHandler(handler)
    assert handled == [True]  # (logged once: the handler's own discard is in the same episode)
    assert values(q.take()) == [3, 4] and q.discarded == 4


def test_clear_and_discard_all():
    q = make(policy=BLOCK)
    _fill(q, range(3))
    assert q.clear() == 3 and q.discarded == 0 and not q
    _fill(q, range(3))
    assert q.discard_all() == 3 and q.discarded == 3 and q.bytes == 0


def test_take_while_stops_at_the_first_item_that_fails():
    q = make()
    _fill(q, [1, 2, 5, 3])
    assert values(q.take_while(lambda item: item[0] < 4)) == [1, 2]
    assert q.peek() == (5, 10) and q.bytes == 20 and list(q.items) == [(5, 10), (3, 10)]


def test_statistics():
    q = make(max_items=2, max_bytes=100, policy=DROP_OLD)
    _fill(q, range(3), size=7)
    assert q.statistics() == {
        "items": 2,
        "bytes": 14,
        "max_items": 2,
        "max_bytes": 100,
        "policy": "old",
        "discarded": 1,
    }
    assert Policy.for_discard_mode("new") is DROP_NEW and Policy.for_discard_mode("old") is DROP_OLD


def test_many_producers_and_consumers_keep_the_books_straight():
    q = make(max_items=50, max_bytes=None, policy=DROP_OLD)
    per, producers = 5000, 4
    taken = []
    done = threading.Event()

    def produce(k):
        for i in range(per):
            if i % 3:
                q.put(((k, i), 3))
            else:
                q.put_many([((k, i), 3)])

    def consume():
        while not done.is_set() or q:
            taken.extend(q.take(7))

    consumers = [threading.Thread(target=consume)]  # (one: the order taken is the order seen)
    threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for t in consumers + threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    for t in consumers:
        t.join()
    assert len(taken) + q.discarded == per * producers
    assert q.bytes == 0
    for k in range(producers):  # each producer's items come out in order
        mine = [i for (kk, i), _ in taken if kk == k]
        assert mine == sorted(mine)


def test_a_queue_at_its_item_bound_is_full_and_tells_when_it_drains():
    """Full means one thing: at a bound (no room for another item) marks the
    queue, so on_room comes when it drains (a sync subscriber holding its
    connection at exactly its bound was never told, and held it for ever)."""
    rooms = []
    q = make(max_items=4, policy=BLOCK, on_room=lambda: rooms.append(1))
    q.put_many([(i, 1) for i in range(4)])
    assert q.full
    q.take()
    assert rooms == [1]


def test_put_back_returns_taken_items_to_the_front_in_order_with_their_bytes():
    q = BoundedQueue(max_items=10, max_bytes=1000, size_of=len)
    q.put_many([b"a", b"bb", b"ccc", b"dddd"])
    taken = q.take(2)
    assert taken == [b"a", b"bb"] and q.bytes == 7
    q.put_back(taken)
    assert list(q) == [b"a", b"bb", b"ccc", b"dddd"] and q.bytes == 10
    assert q.statistics()["discarded"] == 0
    q.put_back([])  # (nothing: nothing changes)
    assert len(q) == 4
