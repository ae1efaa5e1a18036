"""The pure side of delivery confirmation (controller/domain/confirm.py): what a controller
names in its CONFIRMs, when, and that it never names what it has not committed."""

from __future__ import annotations

import random

from controller.domain.confirm import MAX_PENDING, ConfirmBook, birth_confirms
from protocol import confirm as pc
from protocol import messages as M


def book(*devices: str, interval: float = 2.0) -> ConfirmBook:
    b = ConfirmBook(interval)
    for d in devices:
        b.set_confirming(d, True)
    return b


def test_consecutive_messages_compress_to_one_triple_per_epoch() -> None:
    b = book("ap-1")
    b.committed(("ap-1", 7, s) for s in range(10, 500))
    b.committed([("ap-1", 8, 1), ("ap-1", 8, 2)])
    assert b.due(0.0) == [("ap-1", [7, 10, 490, 8, 1, 2])]
    assert b.due(100.0) == []  # nothing new


def test_any_arrival_order_gives_the_same_disjoint_ascending_ranges() -> None:
    seqs = [s for s in range(1, 300) if s % 7]  # holes where nothing was stored
    rng = random.Random(5)
    for _ in range(20):
        rng.shuffle(seqs)
        b = book("ap-1")
        b.committed(("ap-1", 3, s) for s in seqs)
        b.committed(("ap-1", 3, s) for s in seqs[:50])  # duplicates change nothing
        flat = [x for e, f, last in b.pending["ap-1"] for x in (e, f, last - f + 1)]
        covered = {
            f + k for i in range(0, len(flat), 3) for f in [flat[i + 1]] for k in range(flat[i + 2])
        }
        assert covered == set(seqs)
        assert len(flat) // 3 == 299 // 7 + 1


def test_at_most_one_confirm_per_device_per_interval_and_21_ranges_each() -> None:
    b = book("ap-1", "ap-2", interval=2.0)
    b.committed(("ap-1", 1, s) for s in range(1, 100, 2))  # 50 single-seq ranges
    b.committed([("ap-2", 1, 5)])
    first = dict(b.due(10.0))
    assert first["ap-2"] == [1, 5, 1]
    assert len(first["ap-1"]) == 3 * M.MAX_CONFIRM_RANGES and pc.check({0: first["ap-1"]}) is None
    assert b.due(11.9) == []  # within the interval: the rest waits
    b.committed([("ap-2", 1, 6)])
    again = dict(b.due(12.0))
    assert again["ap-1"][:3] == [1, 1 + 2 * M.MAX_CONFIRM_RANGES, 1] and again["ap-2"] == [1, 6, 1]


def test_devices_that_did_not_opt_in_are_never_named() -> None:
    b = book("ap-1")
    b.committed([("v1-dev", 1, 1), ("ap-1", 1, 1)])
    b.hold("v1-dev", 1, 2)
    assert [d for d, _ in b.due(0.0)] == ["ap-1"] and b.take_held() == []


def test_a_held_replay_is_named_only_with_the_commit_it_was_taken_with() -> None:
    b = book("ap-1")
    b.hold("ap-1", 4, 9)
    held = b.take_held()
    b.hold("ap-1", 4, 10)  # refused after the batch was taken: waits for the next commit
    b.committed([])
    b.committed(held)
    assert b.due(0.0) == [("ap-1", [4, 9, 1])]


def test_pending_is_bounded_and_a_failed_send_is_pending_again() -> None:
    b = book("ap-1")
    b.committed(("ap-1", 1, s) for s in range(0, 3 * MAX_PENDING, 2))
    assert len(b.pending["ap-1"]) == MAX_PENDING and b.forgotten == MAX_PENDING // 2
    b2 = book("ap-1")
    b2.committed(("ap-1", 1, s) for s in (1, 2, 3, 7))
    ((_, flat),) = b2.due(0.0)
    b2.committed([("ap-1", 1, 4)])
    b2.restore("ap-1", flat)
    assert b2.pending["ap-1"] == [[1, 1, 4], [1, 7, 7]]


def test_opting_out_forgets_what_was_pending() -> None:
    b = book("ap-1")
    b.committed([("ap-1", 1, 1)])
    assert b.set_confirming("ap-1", False) and b.due(0.0) == []
    b.replace_confirming({"ap-2"})
    assert b.confirming == {"ap-2"}


def test_birth_opt_in_is_key_8_equal_to_1() -> None:
    assert birth_confirms({0: "x", 1: "sim", 2: 0, M.B_CONFIRM: 1})
    assert not birth_confirms({0: "x", 1: "sim", 2: 0})
    assert not birth_confirms({M.B_CONFIRM: 2}) and not birth_confirms({M.B_CONFIRM: True})
