"""The shared/exclusive lock that orders reading requests against changes of the suppression list."""

from __future__ import annotations

import threading
import time

from portrait.background import SharedExclusiveLock


def test_shared_holders_overlap_and_exclusive_waits_for_them() -> None:
    lock = SharedExclusiveLock()
    order: list[str] = []
    with lock.shared():
        other = start(lambda: hold(lock, "shared", order, mode="shared"))
        other.join(5)  # a second shared holder got in while the first holds it
        assert order == ["shared"]
        exclusive = start(lambda: hold(lock, "exclusive", order))
        exclusive.join(0.3)
        assert exclusive.is_alive()  # waits for the shared holder
    exclusive.join(5)
    assert order == ["shared", "exclusive"]


def test_a_waiting_exclusive_holder_goes_before_later_shared_ones() -> None:
    lock = SharedExclusiveLock()
    order: list[str] = []
    with lock.shared():
        exclusive = start(lambda: hold(lock, "exclusive", order))
        wait_until_waiting_for_exclusive(lock)
        late_shared = start(lambda: hold(lock, "late shared", order, mode="shared"))
        late_shared.join(0.3)
        assert exclusive.is_alive() and late_shared.is_alive() and order == []
    exclusive.join(5)
    late_shared.join(5)
    assert order == ["exclusive", "late shared"]


def hold(lock: SharedExclusiveLock, name: str, order: list[str], mode: str = "exclusive") -> None:
    with lock.exclusive() if mode == "exclusive" else lock.shared():
        order.append(name)


def wait_until_waiting_for_exclusive(lock: SharedExclusiveLock) -> None:
    """Until a thread waits for exclusive mode. A fixed 0.3 s was not always enough on a busy machine: a thread
    started later could then ask for shared mode first, and rightly get it, failing the test."""
    deadline = time.monotonic() + 10
    while not lock._waiting:
        assert time.monotonic() < deadline, "the exclusive holder never asked for the lock"
        time.sleep(0.001)


def start(target: object) -> threading.Thread:
    thread = threading.Thread(target=target)  # type: ignore[arg-type]
    thread.start()
    return thread
