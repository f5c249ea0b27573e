"""BoundedQueue: bounds, policies, the resume mark, discard counting and logging."""

from __future__ import annotations

import logging
import threading

import pytest

from yoton.queues import BLOCK, DROP_NEW, DROP_OLD, BoundedQueue, Policy


def _fill(q, values, size=10):
    return [q.put(v, size) for v in values]


def test_drop_old_keeps_the_newest_within_both_bounds():
    q = BoundedQueue(max_items=3, max_bytes=None, policy=DROP_OLD)
    _fill(q, range(5))
    assert q.take() == [2, 3, 4]
    assert q.discarded == 2
    q = BoundedQueue(max_items=None, max_bytes=25, policy=DROP_OLD)
    _fill(q, range(5))  # 10 bytes each: two fit
    assert q.take() == [3, 4] and q.discarded == 3 and q.bytes == 0


def test_drop_new_keeps_the_oldest():
    q = BoundedQueue(max_items=3, policy=DROP_NEW)
    assert _fill(q, range(5)) == [True, True, True, False, False]
    assert q.take() == [0, 1, 2] and q.discarded == 2


def test_one_item_always_fits_an_empty_queue():
    for policy in Policy:
        q = BoundedQueue(max_bytes=10, policy=policy)
        assert q.put("big", 1000)
        assert q.bytes == 1000
        assert q.take() == ["big"]


@pytest.mark.parametrize("policy", [DROP_OLD, DROP_NEW, BLOCK])
def test_put_many_follows_the_policy_like_single_puts(policy):
    single = BoundedQueue(max_items=4, max_bytes=35, policy=policy)
    batch = BoundedQueue(max_items=4, max_bytes=35, policy=policy)
    single.put("a", 10)
    batch.put("a", 10)
    values, sizes = list("bcdef"), [10, 1, 10, 1, 10]
    for v, s in zip(values, sizes):
        single.put(v, s)
    dropped = batch.put_many(values, sizes, sum(sizes))
    assert batch.take() == single.take()
    assert batch.discarded == single.discarded == dropped
    assert batch.bytes == single.bytes == 0


def test_block_takes_everything_and_reports_full_until_the_resume_mark():
    rooms = []
    q = BoundedQueue(max_items=None, max_bytes=100, policy=BLOCK, on_room=lambda: rooms.append(len(q)))
    for i in range(15):  # 150 bytes: over the bound, nothing dropped
        q.put(i, 10)
    assert len(q) == 15 and q.discarded == 0 and q.full and not q.has_room(10)
    q.take(7)  # 80 bytes left: under the bound but over the resume mark (75)
    assert q.full and not q.has_room(1) and rooms == []
    q.popleft()  # 70 bytes: drained to the mark
    assert rooms == [7] and not q.full and q.has_room(30) and not q.has_room(31)


def test_a_producer_that_found_no_room_is_told_when_it_may_look_again():
    rooms = []
    q = BoundedQueue(max_bytes=100, policy=BLOCK, on_room=lambda: rooms.append(q.bytes))
    for i in range(10):
        q.put(i, 10)  # exactly at the bound: not over it
    assert not q.full
    assert not q.has_room(50)  # a producer with 50 bytes must wait ...
    q.take(2)  # 80 bytes: still over the resume mark
    assert rooms == []
    q.take(1)
    assert rooms == [70]  # ... and is told at the mark, not only when it runs empty


def test_on_room_when_the_queue_runs_empty():
    rooms = []
    q = BoundedQueue(max_bytes=100, policy=DROP_OLD, on_room=lambda: rooms.append(1))
    q.put(1, 10)
    q.put(2, 10)
    q.popleft()
    assert rooms == []
    q.popleft()
    assert rooms == [1]


def test_stalled_needs_full_and_no_progress(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("yoton.queues.time.monotonic", lambda: clock[0])
    q = BoundedQueue(max_bytes=20, policy=BLOCK)
    q.put(1, 15)
    clock[0] += 10
    assert not q.stalled(1.0)  # not full: a quiet queue is not a stalled one
    q.put(2, 15)
    assert q.full and q.stalled(1.0)
    q.note_progress()
    assert not q.stalled(1.0)
    clock[0] += 0.5
    assert not q.stalled(1.0) and q.stalled(0.5)


def test_discards_are_logged_once_per_episode(caplog):
    q = BoundedQueue(max_items=2, policy=DROP_NEW, name="test queue")
    with caplog.at_level(logging.WARNING, logger="yoton"):
        _fill(q, range(10))
        assert q.discarded == 8
        assert len([r for r in caplog.records if "test queue is full" in r.message]) == 1
        q.take()  # drained: the episode is over
        _fill(q, range(10))
        assert len([r for r in caplog.records if "test queue is full" in r.message]) == 2
        assert "discarding the newest" in caplog.records[-1].message


def test_clear_and_discard_all():
    q = BoundedQueue(policy=BLOCK)
    _fill(q, range(3))
    assert q.clear() == 3 and q.discarded == 0 and not q
    _fill(q, range(3))
    assert q.discard_all() == 3 and q.discarded == 3 and q.bytes == 0


def test_take_while_stops_at_the_first_item_that_fails():
    q = BoundedQueue()
    _fill(q, [1, 2, 5, 3])
    assert q.take_while(lambda v: v < 4) == [1, 2]
    assert q.peek() == 5 and q.bytes == 20


def test_statistics():
    q = BoundedQueue(max_items=2, max_bytes=100, policy=DROP_OLD)
    _fill(q, range(3), size=7)
    assert q.statistics() == {"items": 2, "bytes": 14, "max_items": 2, "max_bytes": 100,
                              "policy": "old", "discarded": 1}
    assert Policy.for_discard_mode("new") is DROP_NEW and Policy.for_discard_mode("old") is DROP_OLD


def test_many_producers_and_consumers_keep_the_books_straight():
    q = BoundedQueue(max_items=50, max_bytes=None, policy=DROP_OLD)
    per, producers = 5000, 4
    taken = []
    done = threading.Event()

    def produce(k):
        for i in range(per):
            if i % 3:
                q.put((k, i), 3)
            else:
                q.put_many([(k, i)], [3], 3)

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
        mine = [i for kk, i in taken if kk == k]
        assert mine == sorted(mine)
