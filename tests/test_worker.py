"""The parent side of the model worker that needs no model: the order in which callers get their turn."""

from __future__ import annotations

import threading
import time

from workbench.worker import ArrivalOrderLock


def test_callers_get_the_worker_in_the_order_they_asked():
    lock = ArrivalOrderLock()
    served: list[int] = []

    def caller(i: int) -> None:
        with lock:
            served.append(i)

    lock.__enter__()  # a generation is running
    threads = []
    for i in range(6):
        threads.append(threading.Thread(target=caller, args=(i,)))
        threads[-1].start()
        deadline = time.time() + 10
        while len(lock._waiters) < i + 1:  # caller i is in line before caller i + 1 arrives
            assert time.time() < deadline
            time.sleep(0.001)
    lock.__exit__(None, None, None)
    for t in threads:
        t.join(10)
    assert served == [0, 1, 2, 3, 4, 5]
    with lock:  # free again, and reentry after a release works
        pass
    assert not lock._held
