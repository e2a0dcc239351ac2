"""Dynamic micro-batching of classification requests: whatever adapters they name, requests that arrive within
``max_wait`` of the first one (up to ``max_batch`` texts) run as ONE forward with a ``PerExample`` setup and
per-row task heads.

Bad requests never get here (the app checks them first), so a batch holds only well-formed ones; an exception
inside a forward fails that batch's requests only, and the loop goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.composition import PerExample
from ..core.model import set_active
from .registry import Registry, Resolved, tensor_device

__all__ = ["ClassifyBatcher", "ClassifyJob", "classify_forward"]

log = logging.getLogger("adaptune.serve")


@dataclass
class ClassifyJob:
    """One request: its texts and what they run with; ``future`` gets one probability row per text."""

    texts: list[str]
    resolved: Resolved
    future: asyncio.Future[list[torch.Tensor]]
    queued_at: float = field(default_factory=time.perf_counter)


def classify_forward(
    registry: Registry, tokenizer: Any, jobs: Sequence[ClassifyJob], max_length: int, autocast: Callable[[], Any]
) -> list[list[torch.Tensor]]:
    """Run ``jobs`` as one forward; per job, the softmax probabilities of each text over its own labels (fp32)."""
    texts = [t for j in jobs for t in j.texts]
    setups = [j.resolved.setup for j in jobs for _ in j.texts]
    heads = [j.resolved.head for j in jobs for _ in j.texts]
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    device = tensor_device(registry.model)
    with registry.lock:
        # one setup for the whole batch skips the per-example gather/scatter
        set_active(registry.model, setups[0] if len(set(setups)) == 1 else PerExample(setups))
        bank = registry.heads
        if bank is not None:
            bank.rows = heads
        try:
            with torch.no_grad(), autocast():
                logits = registry.model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
        finally:
            if bank is not None:
                bank.rows = None
    out: list[list[torch.Tensor]] = []
    row = 0
    for job in jobs:
        n_labels = len(job.resolved.labels or ())
        out.append([logits[row + i, :n_labels].softmax(-1) for i in range(len(job.texts))])
        row += len(job.texts)
    return out


class ClassifyBatcher:
    """Collects ``ClassifyJob``s and runs them in batches on one worker thread.

    Args:
        run: ``classify_forward`` bound to the model (jobs -> per-job probability rows).
        max_batch: most texts per forward (a request with more runs alone).
        max_wait: seconds the first request of a batch waits for company.
        on_batch: called with (texts, requests) after each forward (metrics).
    """

    def __init__(
        self,
        run: Callable[[Sequence[ClassifyJob]], list[list[torch.Tensor]]],
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.run, self.max_batch, self.max_wait, self.on_batch = run, max_batch, max_wait, on_batch
        self.queue: asyncio.Queue[ClassifyJob] = asyncio.Queue()
        self._carry: ClassifyJob | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptune-classify")

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self.queue.qsize() + (self._carry is not None)

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, job: ClassifyJob) -> list[torch.Tensor]:
        """Queue ``job`` and wait for its probability rows."""
        await self.queue.put(job)
        return await job.future

    async def stop(self) -> None:
        """Finish the queued requests, then stop (a SIGTERM drain)."""
        while self.depth:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def _next_batch(self) -> list[ClassifyJob]:
        first = self._carry or await self.queue.get()
        self._carry = None
        batch, texts = [first], len(first.texts)
        deadline = time.perf_counter() + self.max_wait
        while texts < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = (
                    self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
                )
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if texts + len(job.texts) > self.max_batch:
                self._carry = job  # it opens the next batch
                break
            batch.append(job)
            texts += len(job.texts)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [j for j in await self._next_batch() if not j.future.done()]  # a client that left: skip
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run, batch)
            except Exception as err:  # fail this batch only; the next one runs
                log.exception("classification batch of %d requests failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(len(j.texts) for j in batch), len(batch))
            for job, rows in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(rows)
