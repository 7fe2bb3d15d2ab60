"""One generation at a time, on a worker thread, behind a bounded queue.

A :class:`~openllm_hub.core.model.Model` holds one KV cache and is not meant to generate for
two callers at once, and generation is blocking (numpy, torch, llama.cpp). So the server
runs every generation on a single worker thread, in arrival order. At most
``1 + queue_size`` requests are admitted (one running, the rest waiting); the next one is
refused with :class:`QueueFullError` (HTTP 429 with ``Retry-After``).

Chunks travel back to the event loop through an ``asyncio.Queue``. Cancelling a job (the
client went away, or the server shuts down) takes it out of the queue if it is waiting, or
makes the worker stop iterating the model's stream after the current token; closing that
generator runs the model's own clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from openllm_hub.core.model import Chunk

#: What a job sends back: a chunk, the exception that ended it, or ``None`` for the end.
Event = Chunk | BaseException | None
StartFn = Callable[[], Iterator[Chunk]]


class QueueFullError(Exception):
    """Every slot is taken; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int, capacity: int) -> None:
        super().__init__(f"the server is busy: {capacity} requests are already running or waiting")
        self.retry_after = retry_after
        self.capacity = capacity


class ShuttingDownError(Exception):
    """The scheduler no longer takes jobs."""


class Job:
    """One admitted generation. Created by :meth:`Scheduler.submit`; read with :meth:`next_events`.

    Events wait in a buffer; the worker wakes the event loop only when it is not already
    due to look, so a fast model does not pay one cross-thread wake-up per token.
    """

    def __init__(self, start: StartFn, loop: asyncio.AbstractEventLoop, scheduler: Scheduler) -> None:
        self._start = start
        self._loop = loop
        self._scheduler = scheduler
        self._buffer: deque[Event] = deque()
        self._buffer_lock = threading.Lock()
        self._wake_pending = False
        self._ready = asyncio.Event()
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop this job: drop it if waiting, stop after the current token if running."""
        if self._cancel.is_set():
            return
        self._cancel.set()
        self._scheduler._forget_waiting(self)

    async def next_events(self) -> list[Event]:
        """Every event posted since the last call; waits for at least one."""
        while True:
            with self._buffer_lock:
                if self._buffer:
                    events = list(self._buffer)
                    self._buffer.clear()
                    return events
                self._ready.clear()
            await self._ready.wait()

    def _wake(self) -> None:
        with self._buffer_lock:
            self._wake_pending = False
        self._ready.set()

    def _post(self, event: Event) -> None:
        with self._buffer_lock:
            self._buffer.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        # The loop is gone when the server stopped without waiting for us; nobody listens then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake)

    def _run(self, release: Callable[[], None]) -> None:
        """Worker thread: iterate the model's stream until it ends, fails or is cancelled.

        The slot is released *before* the last event is posted: a client that sends its next
        request as soon as it has its answer must find the slot free.
        """
        final: Event = None
        if not self._cancel.is_set():
            try:
                stream = self._start()
                try:
                    for chunk in stream:
                        if chunk.finish_reason is not None:
                            final = chunk
                            break
                        self._post(chunk)
                        if self._cancel.is_set():
                            break
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
            except Exception as exc:  # noqa: BLE001 - reported to the one request that caused it
                final = exc
        release()
        self._post(final)


@dataclass(frozen=True)
class QueueStats:
    running: int
    waiting: int
    capacity: int
    completed: int


class Scheduler:
    """Admits up to ``1 + queue_size`` jobs and runs them one by one on a worker thread."""

    def __init__(self, queue_size: int) -> None:
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        self.capacity = 1 + queue_size
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._completed = 0
        #: smoothed seconds per job, for Retry-After
        self._avg_seconds = 1.0

    # ---- event-loop side -------------------------------------------------------------
    def submit(self, start: StartFn) -> Job:
        """Admit a job or raise :class:`QueueFullError` / :class:`ShuttingDownError`."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._closed:
                raise ShuttingDownError("the server is shutting down")
            busy = len(self._waiting) + (self._running is not None)
            if busy >= self.capacity:
                retry = max(1, min(3600, math.ceil(self._avg_seconds * busy)))
                raise QueueFullError(retry, self.capacity)
            job = Job(start, loop, self)
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="openllm-hub-generation", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job

    def stats(self) -> QueueStats:
        with self._cond:
            return QueueStats(int(self._running is not None), len(self._waiting), self.capacity, self._completed)

    def close(self, grace: float = 10.0) -> None:
        """Refuse new jobs, cancel waiting ones, give the running one ``grace`` seconds, then cancel it."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            running = self._running
            thread = self._thread
            self._cond.notify_all()
        for job in waiting:
            job.cancel()
        if thread is None:
            return
        thread.join(grace)
        if thread.is_alive() and running is not None:
            running.cancel()
            thread.join(grace)

    # ---- worker side -------------------------------------------------------------------
    def _forget_waiting(self, job: Job) -> None:
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running or already done: the worker notices the flag
        job._post(None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                job = self._running = self._waiting.popleft()
            release = functools.partial(self._release, job, time.perf_counter())
            try:
                job._run(release)
            finally:
                release()

    def _release(self, job: Job, t0: float) -> None:
        """Free the running slot (once per job)."""
        with self._cond:
            if self._running is not job:
                return
            self._running = None
            self._completed += 1
            self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * (time.perf_counter() - t0)
