"""An asyncio event loop on a thread of its own, fed from synchronous code (a DoFn).

Why: a Beam DoFn is called synchronously, one element at a time, but the
endpoint calls of hundreds of members must be in flight at once. Threads cost
~1 ms of CPU per call at that concurrency; one event loop costs a fraction of
it (docs/decisions.md). The DoFn hands coroutines to the loop and collects
their results as they finish; the loop lives as long as the DoFn instance.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any


class LoopThread:
    """One event loop running forever on a daemon thread, until ``close``."""

    def __init__(self, name: str = "event-loop"):
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine) -> Any:
        """Run ``coro`` on the loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def spawn(self, coro: Coroutine) -> None:
        """Start ``coro`` on the loop without waiting; it must report its own result and
        handle its own errors (cheaper than ``submit``: no future to chain)."""
        self.loop.call_soon_threadsafe(self._start, coro)

    def _start(self, coro: Coroutine) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Cancel what is still running, stop the loop and wait for its thread."""
        if self.loop.is_closed():
            return

        async def cancel_all():
            tasks = [t for t in self._tasks if not t.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            self.run(cancel_all())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()
