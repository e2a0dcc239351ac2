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
from dataclasses import dataclass
from typing import Any

import torch

from ..core.composition import PerExample
from .registry import Registry, Resolved, ServeError, tensor_device

__all__ = ["ClassifyBatcher", "ClassifyJob", "classify_forward"]

log = logging.getLogger("adaptune.serve")


@dataclass
class ClassifyJob:
    """One request: its texts and what they run with; ``future`` gets one probability row per text.

    ``truncate``: cut texts longer than the model accepts; otherwise such a text fails this job (413) alone.
    """

    texts: list[str]
    resolved: Resolved
    future: asyncio.Future[list[torch.Tensor]]
    truncate: bool = False


# Rows per forward inside a batch: rows sorted by length run in chunks of at most this many, so a short text is not
# padded to the longest of 32 (on this CPU two sorted halves of 32 reviews took ~15% less than one padded forward).
CHUNK_ROWS = 16
Row = tuple[int, int, list[int]]  # (job index, text index, token ids)


def classify_forward(
    registry: Registry, tokenizer: Any, jobs: Sequence[ClassifyJob], max_length: int, autocast: Callable[[], Any]
) -> list[list[torch.Tensor] | ServeError]:
    """Run ``jobs`` together; per job, the softmax probabilities of each text over its own labels (fp32), or the
    ``ServeError`` of a job whose text is too long (the other jobs still run)."""
    ids = tokenizer([t for j in jobs for t in j.texts], add_special_tokens=True)["input_ids"]
    results: list[list[torch.Tensor] | ServeError] = []
    rows: list[Row] = []  # the texts that run
    flat = 0
    for j, job in enumerate(jobs):
        lengths = [len(x) for x in ids[flat : flat + len(job.texts)]]
        too_long = [i for i, n in enumerate(lengths) if n > max_length]
        if too_long and not job.truncate:
            i = too_long[0]
            results.append(_too_long(i, lengths[i], max_length))
        else:
            results.append([])
            for i in range(len(job.texts)):
                row = ids[flat + i]
                if len(row) > max_length:  # the tokenizer's own truncation keeps the closing special tokens
                    row = tokenizer(job.texts[i], truncation=True, max_length=max_length)["input_ids"]
                rows.append((j, i, row))
        flat += len(job.texts)
    probs: dict[tuple[int, int], torch.Tensor] = {}
    with registry.lock:
        for group in _groups(jobs, rows):
            for chunk in _chunks(group):
                chunk_jobs = [jobs[j] for j, _, _ in chunk]
                logits = _forward_rows(registry, tokenizer, chunk_jobs, [r for _, _, r in chunk], autocast)
                for (j, i, _), row in zip(chunk, logits, strict=True):
                    probs[(j, i)] = row[: len(jobs[j].resolved.labels or ())].softmax(-1)
    for j, job in enumerate(jobs):
        if not isinstance(results[j], ServeError):
            results[j] = [probs[(j, i)] for i in range(len(job.texts))]
    return results


def _groups(jobs: Sequence[ClassifyJob], rows: list[Row]) -> list[list[Row]]:
    """Rows that may share forwards: all of them, except that rows of a whole-model adapter (prompt / prefix, which
    change the sequence every row shares) go in forwards of their own, one setup each."""
    shared = [r for r in rows if not jobs[r[0]].resolved.solo]
    solo: dict[Any, list[Row]] = {}
    for r in rows:
        if jobs[r[0]].resolved.solo:
            solo.setdefault(jobs[r[0]].resolved.setup, []).append(r)
    return [g for g in (shared, *solo.values()) if g]


def _chunks(rows: list[Row]) -> list[list[Row]]:
    """``rows`` sorted by length in near-equal chunks of at most ``CHUNK_ROWS``."""
    rows = sorted(rows, key=lambda r: len(r[2]))
    n_chunks = max(1, -(-len(rows) // CHUNK_ROWS))
    size = max(1, -(-len(rows) // n_chunks))
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def _too_long(i: int, n: int, max_length: int) -> ServeError:
    message = f'texts[{i}]: {n} tokens, the model accepts {max_length}; send "truncate": true to cut it'
    return ServeError(413, message, f"texts[{i}]")


def _forward_rows(
    registry: Registry, tokenizer: Any, jobs: Sequence[ClassifyJob], rows: list[list[int]], autocast: Callable[[], Any]
) -> torch.Tensor:
    """One forward of token-id ``rows`` (row r runs ``jobs[r]``'s setup and head); fp32 logits, padded to the widest
    head. Call with ``registry.lock`` held."""
    enc = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    setups = [j.resolved.setup for j in jobs]
    # one setup for the whole chunk skips the per-example gather/scatter
    registry.activate(setups[0] if len(set(setups)) == 1 else PerExample(setups))
    bank = registry.heads
    if bank is not None:
        bank.rows = [j.resolved.head for j in jobs]
    device = tensor_device(registry.model)
    try:
        with torch.no_grad(), autocast():
            return registry.model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
    finally:
        if bank is not None:
            bank.rows = None


class ClassifyBatcher:
    """Collects ``ClassifyJob``s and runs them in batches on one worker thread.

    Args:
        run: ``classify_forward`` bound to the model (jobs -> per-job probability rows).
        max_batch: most texts per forward (a request with more runs alone).
        max_wait: seconds the first request of a batch waits for company, when company is on its way (requests
            being read); a lone request runs at once.
        on_batch: called with (texts, requests, seconds of the forward) after each forward (metrics).
    """

    def __init__(
        self,
        run: Callable[[Sequence[ClassifyJob]], list[list[torch.Tensor] | ServeError]],
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.run, self.max_batch, self.max_wait, self.on_batch = run, max_batch, max_wait, on_batch
        self.queue: asyncio.Queue[ClassifyJob] = asyncio.Queue()
        self._carry: ClassifyJob | None = None
        self.arriving = 0  # requests past the HTTP layer, not yet queued (their handler counts them)
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptune-classify")

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self.queue.qsize() + (self._carry is not None)

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

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
            if self.queue.empty() and self.arriving == 0:
                break  # nobody else is on the way: waiting would only add latency
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
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run, batch)
            except Exception as err:  # fail this batch only; the next one runs
                log.exception("classification batch of %d requests failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(len(j.texts) for j in batch), len(batch), time.perf_counter() - start)
            for job, rows in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(rows, ServeError):
                    job.future.set_exception(rows)
                else:
                    job.future.set_result(rows)
