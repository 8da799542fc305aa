"""Micro-batching: queries that arrive within a short window share one call of the model owner.

Requests wait on an asyncio queue; one collector task takes the first, keeps taking for ``window_ms`` (or
until ``max_batch`` are held), and runs the batch on the single model thread, so the event loop never
blocks on the models. While a batch runs, newcomers queue up and form the next one. ``window_ms = 0`` and
``max_batch = 1`` turn batching off (one request per model call).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list], Sequence], window_ms: float = 3.0, max_batch: int = 64):
        if window_ms < 0 or max_batch < 1:
            raise ValueError(f"batching: window_ms must be >= 0 and max_batch >= 1; got {window_ms}, {max_batch}")
        self.run_batch, self.window, self.max_batch = run_batch, window_ms / 1000.0, max_batch
        self.queue: Optional[asyncio.Queue] = None
        self.task: Optional[asyncio.Task] = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dcd-models")
        self.batches = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Answers what is queued, then stops (the server has stopped taking requests)."""
        if self.task is None:
            return
        await self.queue.put(None)
        await self.task
        self.task = None
        self.executor.shutdown(wait=True)

    async def submit(self, item):
        """The answer to ``item`` (the batch's exception, if its model call failed) and the queue wait (ms)."""
        if self.task is None or self.task.done():
            raise RuntimeError("the model thread is not running")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future, time.perf_counter()))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self.queue.get()
            if first is None:
                break
            batch = [first]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                try:
                    nxt = self.queue.get_nowait() if self.window == 0 else \
                        await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            await self._run(loop, batch)

    async def _run(self, loop, batch) -> None:
        started = time.perf_counter()
        try:
            answers = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _, _ in batch])
        except Exception as e:  # every request of the batch gets the error; the collector keeps serving
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(e)
            return
        finally:
            self.batches += 1
        for (_, future, queued), answer in zip(batch, answers):
            if not future.done():  # a client that went away cancelled its future
                future.set_result((answer, (started - queued) * 1000.0))
