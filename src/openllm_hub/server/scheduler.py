"""N running slots and a bounded queue, served by one worker thread that steps a batch.

The model's sequences share one :class:`~openllm_hub.core.batch.Batch` (see
:mod:`openllm_hub.core.batch`): up to ``parallel`` requests run at once, each one a sequence of
that batch, and each :meth:`Batch.step <openllm_hub.core.batch.Batch.step>` gives every running
request its next token, in one forward pass where the engine batches and in turn where it
interleaves. Up to ``queue_size`` more wait; requests join from the queue in arrival order
(first in, first out) as soon as a slot is free, between two steps, so none starves. The next
one is refused with :class:`QueueFullError` (HTTP 429 with ``Retry-After``).

Generation is blocking (numpy, torch, llama.cpp), so it all runs on the one worker thread,
which alone touches the batch. Chunks travel back to the event loop through each job's
buffer. Cancelling a job (the client went away, or the server shuts down) takes it out of the
queue if it is waiting, or out of the batch before the next step if it is running: its slot
is free at once and its neighbours continue unchanged. A request that fails (its exception)
ends that request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openllm_hub.core.batch import Batch, PreparedStream
from openllm_hub.core.model import Chunk, Model

if TYPE_CHECKING:  # pragma: no cover
    from openllm_hub.server.metrics import ServerMetrics

#: What a job sends back: a chunk, the exception that ended it, or ``None`` for the end.
Event = Chunk | BaseException | None


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

    def __init__(self, stream: PreparedStream, loop: asyncio.AbstractEventLoop, scheduler: Scheduler) -> None:
        self.stream = stream
        self.created = time.perf_counter()
        self._loop = loop
        self._scheduler = scheduler
        self._buffer: deque[Event] = deque()
        self._buffer_lock = threading.Lock()
        self._wake_pending = False
        self._ready = asyncio.Event()
        self._cancel = threading.Event()
        #: worker side: the job's key in the batch while it runs, when its first token came
        self.key: int | None = None
        self.first_token: float | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop this job: drop it if waiting, take it out of the batch before the next step if running."""
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


@dataclass(frozen=True)
class QueueStats:
    running: int
    waiting: int
    capacity: int
    completed: int
    parallel: int = 1


#: The most slots chosen by default (more make each request slower for little gain on one machine).
MAX_DEFAULT_PARALLEL = 8


def default_parallel(model: Model) -> tuple[int, str]:
    """A sensible number of slots for ``model`` on this machine, and why.

    An engine that interleaves (no batched forward pass) gets 1: more slots share its time
    without adding speed (``--parallel N`` still serves N requests in turn). A batching engine
    gets one slot per CPU thread, 2 to 8, and no more than half the free memory (GPU memory
    for a model on CUDA, else RAM) holds full-context caches of, where the engine says what a
    token's cache costs (``info.extra["kv_bytes_per_token"]``).
    """
    if model.batching != "batched":
        return 1, f"the {model.info.engine} engine {model.batching} sequences, so more slots add no speed"
    from openllm_hub.core.device import probe_machine

    machine = probe_machine()
    n = max(2, min(MAX_DEFAULT_PARALLEL, machine.cpu_threads))
    why = f"{machine.cpu_threads} CPU threads"
    per_token = model.info.extra.get("kv_bytes_per_token")
    ctx = model.info.context_length
    free: int | None = None
    if model.info.device.startswith("cuda") and machine.gpus:
        free = machine.gpus[0].free_mib * 2**20
    else:
        from openllm_hub.core.plan import available_ram

        free = available_ram()
    if isinstance(per_token, int) and per_token > 0 and ctx and free:
        fit = max(1, int(free // 2 // (per_token * ctx)))
        if fit < n:
            n, why = fit, f"half the free memory holds {fit} full-context caches"
    return n, why


class Scheduler:
    """Runs up to ``parallel`` jobs of ``model`` at once in one batch, with ``queue_size`` more waiting."""

    def __init__(self, model: Model, queue_size: int, *, parallel: int = 1,
                 metrics: ServerMetrics | None = None) -> None:
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        self.model = model
        self.parallel = parallel
        self.capacity = parallel + queue_size
        self.metrics = metrics
        self._batch: Batch | None = None
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._completed = 0
        #: smoothed seconds per job, for Retry-After
        self._avg_seconds = 1.0

    @property
    def slot_tokens(self) -> int | None:
        """The most tokens (prompt and generated) one request may hold; None where unknown."""
        return self._get_batch().slot_tokens

    def _get_batch(self) -> Batch:
        """The one batch, made on first use (by a request's slot check or admission)."""
        with self._cond:  # a re-entrant lock: submit() holds it already
            if self._batch is None:
                self._batch = self.model.new_batch(self.parallel)
            return self._batch

    # ---- event-loop side -------------------------------------------------------------
    def submit(self, stream: PreparedStream) -> Job:
        """Admit a job or raise :class:`QueueFullError` / :class:`ShuttingDownError`."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._closed:
                raise ShuttingDownError("the server is shutting down")
            busy = len(self._waiting) + len(self._running)
            if busy >= self.capacity:
                rounds = busy / self.parallel
                retry = max(1, min(3600, math.ceil(self._avg_seconds * rounds)))
                if self.metrics is not None:
                    self.metrics.refused()
                raise QueueFullError(retry, self.capacity)
            self._get_batch()
            job = Job(stream, loop, self)
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="openllm-hub-generation", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job

    def stats(self) -> QueueStats:
        with self._cond:
            return QueueStats(len(self._running), len(self._waiting), self.capacity, self._completed, self.parallel)

    def close(self, grace: float = 10.0) -> None:
        """Refuse new jobs, cancel waiting ones, give running ones ``grace`` seconds, then cancel them."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            thread = self._thread
            self._cond.notify_all()
        for job in waiting:
            job.cancel()
        if thread is None:
            if self._batch is not None:  # made for a slot check, never run: free what its decoder holds
                self._batch.close()
            return
        thread.join(grace)
        if thread.is_alive():
            with self._cond:
                running = list(self._running)
            for job in running:
                job.cancel()
            thread.join(grace)

    # ---- worker side -------------------------------------------------------------------
    def _forget_waiting(self, job: Job) -> None:
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                self._cond.notify()  # running (the worker drops it before its next step) or done
                return
        job._post(None)

    def _work(self) -> None:
        batch = self._get_batch()
        by_key: dict[int, Job] = {}
        try:
            while True:
                with self._cond:
                    while not self._waiting and not self._running and not self._closed:
                        self._cond.wait()
                    if not self._waiting and not self._running:
                        return
                    joining = []
                    while self._waiting and len(self._running) < self.parallel:
                        job = self._waiting.popleft()
                        self._running.append(job)
                        joining.append(job)
                    leaving = [job for job in self._running if job.cancelled]
                for job in leaving:
                    if job.key is not None:
                        batch.cancel(job.key)
                        by_key.pop(job.key, None)
                    self._finish(job, None, "cancelled")
                for job in joining:
                    if job.cancelled:
                        continue
                    try:
                        job.key = batch.add(job.stream.prompt_ids, job.stream.config)
                    except Exception as exc:  # noqa: BLE001 - reported to the one request that caused it
                        self._finish(job, exc, "error")
                        continue
                    by_key[job.key] = job
                    if self.metrics is not None:
                        self.metrics.admitted(len(job.stream.prompt_ids))
                if not by_key:
                    continue
                try:
                    events = batch.step()
                except Exception as exc:  # noqa: BLE001 - the model itself failed (closed): every running job
                    for key, job in list(by_key.items()):
                        batch.cancel(key)
                        self._finish(job, exc, "error")
                    by_key.clear()
                    continue
                for key, event in events:
                    job = by_key[key]
                    if isinstance(event, BaseException):
                        del by_key[key]
                        self._finish(job, event, "error")
                        continue
                    self._tokens(job, event)
                    if event.finish_reason is not None:
                        del by_key[key]
                        self._finish(job, event, event.finish_reason)
                    else:
                        job._post(event)
        finally:
            for job in list(by_key.values()):
                self._finish(job, None, "cancelled")
            with contextlib.suppress(Exception):
                batch.close()

    def _tokens(self, job: Job, chunk: Chunk) -> None:
        now = time.perf_counter()
        if job.first_token is None:
            job.first_token = now
            if self.metrics is not None:
                self.metrics.first_token(now - job.created)
        if self.metrics is not None and chunk.token_ids:
            self.metrics.generated(len(chunk.token_ids))

    def _finish(self, job: Job, final: Event, outcome: str) -> None:
        """Free the job's slot, then post its last event: a client that sends its next request
        as soon as it has its answer must find the slot free."""
        with self._cond:
            if job not in self._running:
                return
            self._running.remove(job)
            self._completed += 1
            self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * (time.perf_counter() - job.created)
            self._cond.notify()
        if self.metrics is not None:
            self.metrics.finished(outcome, final if isinstance(final, Chunk) else None)
        job._post(final)
