"""Decode-step batching: concurrent generation requests that name different adapters share one forward per step.

Continuous batching (as in Orca, Yu et al., OSDI 2022) over one frozen causal LM: a waiting request joins at the
next step (its prompt is prefilled, several joiners together), a finished one leaves, and every decode step is one
forward of (B, 1) tokens for all rows under ``PerExample(setups of the rows)``, so each row runs its own adapter
setup. The rows share one batched ``DynamicCache``, left-padded so every row's real tokens end at the last column::

    cache column     0  1  2  3  4  5  6
    row 0 (7 real)   k  k  k  k  k  k  k
    row 1 (4 real)   .  .  .  k  k  k  k     .  left padding: attention mask 0, keys / values zeroed
    row 2 (5 real)   .  .  k  k  k  k  k

    position_ids of the next token = the row's number of real tokens (7, 4, 5)

Joining pads the shorter side on the left and concatenates rows; leaving selects the remaining rows and cuts the
columns that are padding for all of them. A row's real tokens are always contiguous and end at the last column, so
the cache-index causal order Transformers' masks use is each row's own token order.

What the model must do (the tests check tiny Llama, GPT-2, Mistral with a sliding window, Gemma 3, OPT and Bloom
against ``generate``; Qwen2/3, Mixtral, Phi, Phi-3, GPT-NeoX, GPT-J, Falcon, ... matched it too):

- a causal LM whose forward takes ``input_ids``, a 2D ``attention_mask`` over cache + new tokens, ``position_ids``
  and a Transformers ``Cache`` (``cache=``; ``past_key_values=`` where the forward still names it so), returning
  ``.logits``;
- it fills the given ``DynamicCache`` with plain full-attention ``DynamicLayer`` s (keys / values (B, H, T, D)),
  and takes positions from ``position_ids`` or the attention mask, never from the cache length alone.

Not supported (the forward's requests end with ``finish_reason="error"``): models with recurrent,
linear-attention or hybrid caches (Mamba, Qwen3-Next) and encoder-decoder models. Sliding-window models run with
a full cache: correct results, memory growing with the sequence. Each token's text decodes the whole completion
again (exact, O(length) per token).

Generation settings come from the request only (greedy, or temperature + top-p); of the model's
``generation_config`` only ``eos_token_id`` is read, once, at construction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..core.composition import Block, Fuse, PerExample, Stack, validate
from ..core.model import list_adapters, set_active
from ..methods.fusion import list_fusions
from . import kvcache
from .textstream import TextStream

__all__ = ["DecodeEngine", "GenerationEvent", "GenerationHandle", "GenerationRequest"]

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 1.0  # the worker re-checks its state at least this often while idle (no busy-waiting)


@dataclass
class GenerationEvent:
    """What one request receives, once per generated token and finally once with ``finished=True``.

    Attributes:
        text: new decoded text since the last event ("" allowed, e.g. while a possible stop string is held back).
        token_ids: the new token ids of this event (a final EOS included; none on a "cancelled" / "error" event).
        finished: this is the request's last event.
        finish_reason: "stop" (EOS or a stop string), "length" (max_tokens), "cancelled" or "error"; None until
            finished.
        error: the error message when ``finish_reason == "error"``.
        prompt_tokens: the prompt's length, on the final event (OpenAI "usage").
        completion_tokens: tokens generated, on the final event.
    """

    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class GenerationRequest:
    """One completion to generate.

    Attributes:
        prompt_ids: the prompt's token ids (at least one).
        setup: an adapter name, a ``Stack`` / ``Average`` / ``Fuse`` block, a list of names (stacked) or None (base).
        max_tokens: at most this many new tokens (at least 1).
        on_event: receives every ``GenerationEvent``; called from the engine thread, so it must be cheap and never
            block (hand the event to a queue).
        temperature: 0 = greedy; else logits / temperature are sampled.
        top_p: nucleus sampling: sample among the most likely tokens whose probabilities reach ``top_p``.
        stop: generation ends when the completion's text contains one of these; that text and anything after it
            are not emitted.
        seed: the sampling seed; the same seed gives the same tokens whatever else is in the batch.
    """

    prompt_ids: list[int]
    setup: Any
    max_tokens: int
    on_event: Callable[[GenerationEvent], None]
    temperature: float = 0.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    ignore_eos: bool = False  # run to max_tokens whatever the model emits (fixed-length load for benchmarks)


class GenerationHandle:
    """The caller's hold on a submitted request."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._cancelled = threading.Event()
        self._wake = wake

    def cancel(self) -> None:
        """Leave the batch at the next step; the final event then has ``finish_reason="cancelled"`` (no-op once the
        request has finished)."""
        self._cancelled.set()
        self._wake()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self._cancelled.is_set()


@dataclass(eq=False)
class _Job:
    """One request inside the engine."""

    request: GenerationRequest
    handle: GenerationHandle
    text: TextStream
    generator: torch.Generator | None
    completion: list[int] = field(default_factory=list)
    length: int = 0  # real tokens of this row in the batched cache (= position of the next token fed)
    done: bool = False


class DecodeEngine:
    """Batches the decode steps of concurrent requests over one model, whatever adapter setup each request names.

    Args:
        model: a causal LM with adapters (see the module docstring for what it must support), in eval mode.
        tokenizer: its tokenizer (``decode``, ``eos_token_id``, ``pad_token_id``).
        max_batch: at most this many requests decode together; the others wait.
        lock: held around every forward (prefill or decode step); the same model may serve other traffic, which
            sets its own active setup under the same lock. None: a private lock.
        autocast: a zero-argument factory of the precision context every forward runs in (None: none).
        on_step: ``on_step(kind, batch_rows)`` after each successful forward, kind "prefill" or "decode".
        activate: ``activate(setup)`` makes ``setup`` the model's active one (default ``set_active``; a server
            passes one that skips the call when the setup is already active).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        max_batch: int = 8,
        lock: threading.Lock | None = None,
        autocast: Callable[[], AbstractContextManager[Any]] | None = None,
        on_step: Callable[[str, int], None] | None = None,
        activate: Callable[[Any], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self._lock = lock if lock is not None else threading.Lock()
        self._autocast = autocast or contextlib.nullcontext
        self._on_step = on_step
        self._activate = activate or (lambda setup: set_active(model, setup))
        self._eos = _eos_ids(tokenizer, model)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # The class's forward: instance wrappers (accelerate's device hooks) hide the parameter names.
        params = inspect.signature(type(model).forward).parameters
        old_name = "past_key_values" in params and "cache" not in params  # renamed to ``cache`` in Transformers 5
        self._cache_kwarg = "past_key_values" if old_name else "cache"
        self._keep_last_logits = "logits_to_keep" in params  # prefill: no (B, T, vocab) logits for the prompt
        self._device = next(model.parameters()).device
        self._cond = threading.Condition()  # guards _waiting, _accepting, _abort
        self._waiting: deque[_Job] = deque()
        self._accepting = True
        self._abort = False
        self._thread: threading.Thread | None = None
        # Touched by the worker thread only.
        self._rows: list[_Job] = []
        self._cache: DynamicCache | None = None

    # ---- public API ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (a daemon).

        Raises:
            RuntimeError: already started, or stopped.
        """
        with self._cond:
            if self._thread is not None or not self._accepting:
                raise RuntimeError("adaptune: the decode engine was already started or stopped")
            self._thread = threading.Thread(target=self._run, name="adaptune-decode", daemon=True)
            self._thread.start()

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue ``request``; it joins the batch at the next step. Thread-safe; never waits for the model.

        Raises:
            RuntimeError: the engine is stopping or stopped.
            KeyError: the setup names an adapter the model does not have.
            ValueError: an invalid setup (nesting, missing fusion layer) or request field.
        """
        setup = _normalise(request.setup)
        _check_request(self.model, request, setup)
        if setup is not request.setup:
            request = dataclasses.replace(request, setup=setup)
        handle = GenerationHandle(self._wake)
        job = _Job(request, handle, TextStream(self.tokenizer, request.prompt_ids, request.stop), _generator(request))
        with self._cond:
            if not self._accepting:
                raise RuntimeError("adaptune: the decode engine is stopped and accepts no requests")
            self._waiting.append(job)
            self._cond.notify_all()
        return handle

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting requests and end the worker thread.

        Args:
            drain: True: queued and running requests run to their end first (for up to ``timeout`` seconds; what
                is left then is cancelled). False: every unfinished request gets a final "cancelled" event.
            timeout: seconds to wait for the worker (twice at most: draining, then cancelling). A request queued
                on an engine never started is cancelled: no worker would run it.
        """
        with self._cond:
            self._accepting = False
            self._abort = self._abort or not drain
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            self._cancel_everything()
            return
        if thread is threading.current_thread():
            return  # called from an on_event callback: the worker sees the flags at its next step
        thread.join(timeout)
        if thread.is_alive() and not self._abort:
            log.warning("adaptune: decode engine still draining after %.0f s; cancelling the rest", timeout)
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            thread.join(timeout)
        if thread.is_alive():
            log.warning("adaptune: the decode worker did not exit within %.0f s (a forward still running)", timeout)

    @property
    def queue_depth(self) -> int:
        """Requests waiting to join the batch."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Requests currently in the decode batch."""
        return len(self._rows)

    # ---- the worker ----------------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while (joiners := self._take_work()) is not None:
                try:
                    self._step(joiners)
                except Exception as exc:  # a bug, not a model error: fail what is in flight, keep serving
                    log.exception("adaptune: decode engine step failed")
                    self._fail([*self._rows, *joiners], exc)
                    self._rows, self._cache = [], None
        finally:
            self._cancel_everything()  # after stop(drain=False); a no-op after a finished drain

    def _take_work(self) -> list[_Job] | None:
        """Wait until there is work; return the waiting jobs that join now (cancelled ones too, to be finished:
        they take no batch row), or None when the worker should exit."""
        with self._cond:
            while not self._abort:
                free = self.max_batch - len(self._rows)
                taken: list[_Job] = []
                left: deque[_Job] = deque()
                for job in self._waiting:
                    cancelled = job.handle.cancelled
                    if cancelled or free > 0:
                        taken.append(job)
                        free -= not cancelled
                    else:
                        left.append(job)
                self._waiting = left
                if taken or self._rows:
                    return taken
                if not self._accepting:
                    return None  # drained
                self._cond.wait(_IDLE_WAIT_S)
            return None

    def _step(self, joiners: list[_Job]) -> None:
        """Finish cancelled requests, prefill the joiners into the batch, run one decode step."""
        for job in [*self._rows, *joiners]:
            if job.handle.cancelled and not job.done:
                self._finish(job, "cancelled")
        self._retire()
        fresh = [job for job in joiners if not job.done]
        if fresh:
            self._prefill(fresh)
        if self._rows and not self._abort:  # stop(drain=False) during the prefill's events: no further forward
            self._decode()

    def _cancel_everything(self) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for job in [*self._rows, *waiting]:
            if not job.done:
                self._finish(job, "cancelled")
        self._rows, self._cache = [], None

    # ---- forwards ------------------------------------------------------------------------------------
    def _prefill(self, jobs: list[_Job]) -> None:
        """One forward over the joiners' prompts (left-padded); on success they join the batch with a first token."""
        lengths = torch.tensor([len(job.request.prompt_ids) for job in jobs])
        width = int(lengths.max())
        ids = torch.full((len(jobs), width), self._pad_id, dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.request.prompt_ids) :] = torch.tensor(job.request.prompt_ids)
        mask = kvcache.left_mask(lengths, width)
        positions = (torch.arange(width) - (width - lengths)[:, None]).clamp(min=0)  # (B, T); pads sit at 0
        cache = DynamicCache()
        try:
            logits = self._forward("prefill", jobs, cache, ids, mask, positions)
            kvcache.check_cache(cache, len(jobs), width)
        except Exception as exc:
            self._fail(jobs, exc)  # the batch is untouched: its rows never saw this cache
            return
        for job, n in zip(jobs, lengths.tolist(), strict=True):
            job.length = n
        kvcache.zero_padding(cache, mask)
        self._join(jobs, cache)
        self._advance(jobs, _sample(logits, jobs))
        self._retire()

    def _decode(self) -> None:
        """One forward of every row's last token (B, 1) against the batched cache."""
        rows = self._rows
        assert self._cache is not None  # rows always come with their cache
        lengths = torch.tensor([job.length for job in rows])
        ids = torch.tensor([[job.completion[-1]] for job in rows])
        mask = kvcache.left_mask(lengths + 1, self._cache.get_seq_length() + 1)
        try:
            logits = self._forward("decode", rows, self._cache, ids, mask, lengths[:, None])
        except Exception as exc:
            self._fail(rows, exc)  # the cache may be half-updated (some layers appended): nothing of it is kept
            self._retire()
            return
        for job in rows:
            job.length += 1
        self._advance(rows, _sample(logits, rows))
        self._retire()

    def _forward(
        self,
        kind: str,
        jobs: list[_Job],
        cache: DynamicCache,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Last-position logits (B, vocab) in fp32 of one forward, each row under its request's setup."""
        setups = [job.request.setup for job in jobs]
        setup = setups[0] if all(s == setups[0] for s in setups) else PerExample(setups)
        kwargs: dict[str, Any] = {self._cache_kwarg: cache, "use_cache": True}
        if self._keep_last_logits:
            kwargs["logits_to_keep"] = 1
        device = self._device
        with self._lock, torch.no_grad(), self._autocast():
            self._activate(setup)  # inside the lock: other traffic sets its own setup under the same lock
            out = self.model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **kwargs
            )
        logits = out.logits[:, -1, :].float()
        if self._on_step is not None:
            try:
                self._on_step(kind, len(jobs))
            except Exception:
                log.exception("adaptune: on_step callback failed")
        return logits

    # ---- batch membership ----------------------------------------------------------------------------
    def _join(self, jobs: list[_Job], cache: DynamicCache) -> None:
        """Add the prefilled ``jobs`` (their own ``cache``) to the batch, left-padding the shorter side."""
        if self._cache is None:
            self._rows, self._cache = list(jobs), cache
            return
        old_len, new_len = self._cache.get_seq_length(), cache.get_seq_length()
        total = max(old_len, new_len)
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat(
                [kvcache.left_pad(old.keys, total - old_len), kvcache.left_pad(new.keys, total - new_len)]
            )
            old.values = torch.cat(
                [kvcache.left_pad(old.values, total - old_len), kvcache.left_pad(new.values, total - new_len)]
            )
        self._rows = [*self._rows, *jobs]

    def _retire(self) -> None:
        """Drop finished rows from the batch and the cache columns that are padding for every remaining row."""
        keep = [i for i, job in enumerate(self._rows) if not job.done]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not self._rows or self._cache is None:
            self._rows, self._cache = [], None
            return
        cut = self._cache.get_seq_length() - max(job.length for job in self._rows)
        for layer in self._cache.layers:
            idx = torch.tensor(keep, device=layer.keys.device)
            layer.keys = layer.keys.index_select(0, idx)[:, :, cut:]
            layer.values = layer.values.index_select(0, idx)[:, :, cut:]

    # ---- events --------------------------------------------------------------------------------------
    def _advance(self, jobs: list[_Job], tokens: list[int]) -> None:
        """Append each job's new token, decide whether it is finished, and send its event."""
        for job, token in zip(jobs, tokens, strict=True):
            if job.done:
                continue
            job.completion.append(token)
            eos = token in self._eos and not job.request.ignore_eos
            reason = "stop" if eos else "length" if len(job.completion) >= job.request.max_tokens else None
            visible = job.completion[:-1] if eos else job.completion  # the EOS token has no text
            try:
                text, stopped = job.text.update(visible, final=reason is not None)
            except Exception as exc:  # a tokenizer failure ends this request only
                self._fail([job], exc)
                continue
            if stopped:
                reason = "stop"
            self._send(job, text, [token], reason)

    def _finish(self, job: _Job, reason: str, error: str | None = None) -> None:
        self._send(job, "", [], reason, error)

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("adaptune: generation failed for %d request(s): %s", len(jobs), message)
        for job in jobs:
            if not job.done:
                self._finish(job, "error", message)

    def _send(self, job: _Job, text: str, token_ids: list[int], reason: str | None, error: str | None = None) -> None:
        """Deliver one event; a callback that raises drops its request (the engine goes on for the others)."""
        final = reason is not None
        job.done = final
        usage = (len(job.request.prompt_ids), len(job.completion)) if final else (0, 0)
        event = GenerationEvent(text, token_ids, final, reason, error, *usage)
        try:
            job.request.on_event(event)
        except Exception:
            log.exception("adaptune: on_event raised; the request is dropped")
            job.done = True


# ---- helpers -----------------------------------------------------------------------------------------
def _normalise(setup: Any) -> Any:
    """A list of names means a Stack, as in ``set_active``; rows need hashable setups for ``PerExample``."""
    if isinstance(setup, (list, tuple)):
        return setup[0] if len(setup) == 1 else (Stack(*setup) if setup else None)
    return setup


def _check_request(model: nn.Module, request: GenerationRequest, setup: Any) -> None:
    """Raise for a request no forward could serve, so it fails alone at submit, not with its batch companions."""
    if not request.prompt_ids:
        raise ValueError("the prompt is empty: at least one token is needed")
    if request.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, not {request.max_tokens}")
    if request.temperature < 0 or not 0 < request.top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, not {request.temperature}, {request.top_p}")
    validate(PerExample([setup]), list_adapters(model))  # a row's setup is an entry of a PerExample
    missing = set(_fusion_names(setup)) - set(list_fusions(model))
    if missing:
        raise ValueError(f"{setup!r}: no fusion layer {sorted(missing)}; create it with adaptune.add_fusion")


def _fusion_names(node: Any) -> list[str]:
    if isinstance(node, Fuse):
        return [node.name]
    if isinstance(node, Block):
        return [name for child in node.children for name in _fusion_names(child)]
    return []


def _generator(request: GenerationRequest) -> torch.Generator | None:
    """A CPU generator per sampled request: its draws depend on its own seed only, not on batch companions."""
    if request.temperature == 0:
        return None
    generator = torch.Generator()
    if request.seed is None:
        generator.seed()
    else:
        generator.manual_seed(request.seed)
    return generator


def _eos_ids(tokenizer: Any, model: nn.Module) -> frozenset[int]:
    """EOS ids of the tokenizer and the model's generation config (each None, an int or a list)."""
    found: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(value, int):
            found.add(value)
        elif value is not None:
            found.update(int(v) for v in value)
    return frozenset(found)


def _sample(logits: torch.Tensor, jobs: list[_Job]) -> list[int]:
    """One next token per row of ``logits`` (B, vocab): argmax, or a draw from the request's own generator."""
    tokens = logits.argmax(-1).tolist()
    for i, job in enumerate(jobs):
        if job.generator is not None:
            tokens[i] = _draw(logits[i], job.request.temperature, job.request.top_p, job.generator)
    return tokens


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    # On the CPU, where the generator lives: the same seed gives the same draw on any device.
    probs = torch.softmax(logits.cpu() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the smallest top set reaching top_p (>= 1 token)
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
