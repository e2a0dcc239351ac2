"""The decode-step batching engine: concurrent requests with different adapter setups share one forward per step
and each still gets exactly what ``model.generate`` gives for its prompt alone; joining, leaving, finish reasons,
sampling seeds, forward errors and shutdown."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import adaptune
from adaptune import AdapterConfig, Stack
from adaptune.serve.generation import DecodeEngine, GenerationEvent, GenerationHandle, GenerationRequest
from adaptune.serve.textstream import TextStream

from .cli_fixtures import SPECIAL, make_tokenizer
from .helpers import randomize
from .tiny_models import VOCAB, tiny_config

WAIT_S = 30.0  # generous: the tests share 2 CPU cores with other work
WORDS = [f"w{i}" for i in range(VOCAB - len(SPECIAL))]  # the tokenizer's 128 ids are the model's 128


class Collector:
    """An ``on_event`` callback that keeps every event (and can act on the n-th one)."""

    def __init__(self, on_nth: dict[int, Callable[[], Any]] | None = None) -> None:
        self.events: list[GenerationEvent] = []
        self.done = threading.Event()
        self.on_nth = on_nth or {}

    def __call__(self, event: GenerationEvent) -> None:
        self.events.append(event)
        if len(self.events) in self.on_nth:
            self.on_nth[len(self.events)]()
        if event.finished:
            self.done.set()

    def wait(self) -> GenerationEvent:
        assert self.done.wait(WAIT_S), "the request did not finish"
        return self.events[-1]

    @property
    def tokens(self) -> list[int]:
        return [t for e in self.events for t in e.token_ids]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = make_tokenizer(WORDS)
    tok.eos_token = None  # no EOS unless a test sets one: every request runs to max_tokens
    return tok


def tiny_lm(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(kind)).eval()
    model.generation_config.eos_token_id = None  # fixed lengths, as in test_per_example_generate.py
    model.generation_config.pad_token_id = 0
    for i, name in enumerate(("a", "b")):
        adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(), activate=False)
        randomize(model, name, seed=i + 1)  # a new adapter is an identity; make a and b differ from the base
    return model


@pytest.fixture
def llama() -> nn.Module:
    return tiny_lm("llama")


@pytest.fixture
def engines(tokenizer: Any) -> Iterator[Callable[..., DecodeEngine]]:
    """A factory of engines over ``tokenizer``, each stopped (cancelling what is left) at teardown."""
    made: list[DecodeEngine] = []

    def make(model: nn.Module, **kw: Any) -> DecodeEngine:
        made.append(DecodeEngine(model, tokenizer, **kw))
        return made[-1]

    yield make
    for engine in made:
        engine.stop(drain=False, timeout=5)


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(len(SPECIAL), VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def alone(model: nn.Module, ids: list[int], setup: Any, n: int) -> list[int]:
    """What ``model.generate`` gives greedily for ``ids`` alone under ``setup``."""
    adaptune.set_active(model, setup)
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


def completion_text(tokenizer: Any, ids: list[int], new: list[int]) -> str:
    """The completion's text as the engine defines it: decode(prompt + completion) after decode(prompt)."""
    before = tokenizer.decode(ids[-4:], skip_special_tokens=True)
    return tokenizer.decode(ids[-4:] + new, skip_special_tokens=True)[len(before) :]


def submit(engine: DecodeEngine, ids: list[int], setup: Any, n: int, **kw: Any) -> tuple[Collector, GenerationHandle]:
    sink = Collector(kw.pop("on_nth", None))
    return sink, engine.submit(GenerationRequest(ids, setup, n, sink, **kw))


SETUPS = ["a", "b", None, Stack("a", "b")]


# Llama (RoPE), GPT-2 (learned positions: left padding needs position_ids), Mistral (sliding window 4 on a full
# cache), Gemma 3 (sliding + full layers), OPT (positions from the attention mask), Bloom (ALiBi).
@pytest.mark.parametrize("kind", ["llama", "gpt2", "mistral", "gemma3_text", "opt", "bloom"])
def test_concurrent_setups_match_each_prompt_alone(kind: str, engines: Callable[..., DecodeEngine]) -> None:
    model = tiny_lm(kind)
    steps: list[tuple[str, int]] = []
    engine = engines(model, on_step=lambda kind, rows: steps.append((kind, rows)))
    prompts = [prompt(n, seed) for seed, n in enumerate((3, 7, 5, 9))]  # different lengths: left padding
    sinks = [submit(engine, ids, setup, 8)[0] for ids, setup in zip(prompts, SETUPS, strict=True)]
    assert engine.queue_depth == 4
    engine.start()
    finals = [sink.wait() for sink in sinks]
    for ids, setup, sink, final in zip(prompts, SETUPS, sinks, finals, strict=True):
        assert sink.tokens == alone(model, ids, setup, 8), setup
        assert (final.finish_reason, final.prompt_tokens, final.completion_tokens) == ("length", len(ids), 8)
        assert [e.finished for e in sink.events] == [False] * 7 + [True]
    # Submitted before start(): one prefill of all 4, then every decode step carries all 4 rows.
    assert steps == [("prefill", 4)] + [("decode", 4)] * 7
    assert (engine.queue_depth, engine.active) == (0, 0)


def test_batch_merges_and_finished_rows_leave(llama: nn.Module, engines: Callable[..., DecodeEngine]) -> None:
    lock = threading.Lock()
    seen_locked: list[bool] = []
    forward = llama.forward

    def checked_forward(*args: Any, **kw: Any) -> Any:
        seen_locked.append(lock.locked())  # the engine holds the caller's lock around every forward
        return forward(*args, **kw)

    def counting_autocast() -> contextlib.nullcontext[None]:
        contexts.append(1)
        return contextlib.nullcontext()

    llama.forward = checked_forward
    steps: list[tuple[str, int]] = []
    contexts: list[int] = []
    engine = engines(llama, lock=lock, autocast=counting_autocast, on_step=lambda k, n: steps.append((k, n)))
    prompts = [prompt(n, 10 + seed) for seed, n in enumerate((4, 6, 2, 5))]
    lengths = (3, 6, 6, 6)
    sinks = [submit(engine, ids, s, n)[0] for ids, s, n in zip(prompts, SETUPS, lengths, strict=True)]
    engine.start()
    for sink in sinks:
        sink.wait()
    del llama.forward
    assert steps == [("prefill", 4), ("decode", 4), ("decode", 4)] + [("decode", 3)] * 3
    assert len(seen_locked) == len(contexts) == len(steps) and all(seen_locked)  # each forward: locked, autocast
    for ids, setup, n, sink in zip(prompts, SETUPS, lengths, sinks, strict=True):
        assert sink.tokens == alone(llama, ids, setup, n)
    assert len({tuple(alone(llama, prompts[1], s, 6)) for s in SETUPS}) == 4  # the setups matter


def test_request_joins_mid_generation(llama: nn.Module, engines: Callable[..., DecodeEngine]) -> None:
    steps: list[tuple[str, int]] = []
    engine = engines(llama, on_step=lambda kind, rows: steps.append((kind, rows)))
    late = {"c": (prompt(11, 21), Stack("a", "b"), 6), "e": (prompt(2, 22), "b", 5)}  # longer / shorter than the batch
    sinks: dict[str, Collector] = {}

    def join(name: str) -> Callable[[], None]:  # runs inside a's on_event, i.e. on the engine thread
        return lambda: sinks.__setitem__(name, submit(engine, *late[name])[0])

    early = {"a": (prompt(6, 23), "a", 12), "b": (prompt(4, 24), "b", 12), "d": (prompt(8, 25), None, 2)}
    sinks["a"] = submit(engine, *early["a"], on_nth={4: join("c"), 8: join("e")})[0]
    sinks["b"] = submit(engine, *early["b"])[0]
    sinks["d"] = submit(engine, *early["d"])[0]
    engine.start()
    for name in ("a", "b", "d", "c", "e"):
        sinks[name].wait()
    # d leaves after its 2 tokens; c joins once a has 4 tokens and decodes together with a and b.
    assert steps[:6] == [("prefill", 3), ("decode", 3), ("decode", 2), ("decode", 2), ("prefill", 1), ("decode", 3)]
    joins = [i for i, step in enumerate(steps) if step == ("prefill", 1)]
    assert len(joins) == 2
    assert all(steps[i + 1][1] == steps[i - 1][1] + 1 for i in joins)  # the new row decodes with the old ones
    for name, (ids, setup, n) in {**early, **late}.items():
        assert sinks[name].tokens == alone(llama, ids, setup, n), name


def test_eos_ends_with_stop_and_has_no_text(
    llama: nn.Module, tokenizer: Any, engines: Callable[..., DecodeEngine]
) -> None:
    ids = prompt(5, 30)
    full = alone(llama, ids, "a", 8)
    k = next(i for i in range(1, 8) if full[i] not in full[:i])  # a token first generated at step k (> 0)
    llama.generation_config.eos_token_id = [full[k]]
    engine = engines(llama)
    sink, _ = submit(engine, ids, "a", 8)
    engine.start()
    final = sink.wait()
    assert (final.finish_reason, final.completion_tokens) == ("stop", k + 1)
    assert sink.tokens == full[: k + 1]
    assert sink.text == completion_text(tokenizer, ids, full[:k])


def test_stop_string_cuts_the_text(llama: nn.Module, tokenizer: Any, engines: Callable[..., DecodeEngine]) -> None:
    ids = prompt(5, 31)
    full = alone(llama, ids, "b", 10)
    text = completion_text(tokenizer, ids, full)
    stop = " ".join(tokenizer.convert_ids_to_tokens(full[3:5]))  # spans two tokens: its first word is held back
    engine = engines(llama)
    sink, _ = submit(engine, ids, "b", 10, stop=["never", stop])
    engine.start()
    final = sink.wait()
    assert final.finish_reason == "stop"
    assert sink.text == text[: text.find(stop)]
    assert final.completion_tokens <= 5
    assert sink.tokens == full[: final.completion_tokens]


def byte_tokenizer() -> Any:
    """A byte-level tokenizer without merges: "é" is two tokens, the first of which decodes to U+FFFD alone."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}, []))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core)


def test_text_deltas_never_cut_a_character_and_hold_back_stop_starts() -> None:
    tok = byte_tokenizer()
    ids = tok.encode("café ok then", add_special_tokens=False)
    stream = TextStream(tok, tok.encode("I had a ", add_special_tokens=False), stop=["ok"])
    deltas = [stream.update(ids[: k + 1], final=False) for k in range(len(ids))]
    stop_at = next(k for k, (_, stopped) in enumerate(deltas) if stopped)
    texts = [text for text, _ in deltas[: stop_at + 1]]
    assert "".join(texts) == "café "
    assert all("\ufffd" not in t for t in texts)
    assert texts[3] == "" and texts[4] == "é"  # the first byte of "é" alone is held back
    assert texts[6] == ""  # "o" could start "ok"


def test_cancel_running_and_waiting(llama: nn.Module, engines: Callable[..., DecodeEngine]) -> None:
    engine = engines(llama, max_batch=1)
    handles: dict[str, GenerationHandle] = {}
    running, handles["running"] = submit(
        engine, prompt(4, 40), "a", 40, on_nth={3: lambda: handles["running"].cancel()}
    )
    waiting, handles["waiting"] = submit(engine, prompt(4, 41), "b", 5)
    handles["waiting"].cancel()  # still queued behind a full batch: it is finished anyway
    engine.start()
    assert (waiting.wait().finish_reason, waiting.tokens) == ("cancelled", [])
    final = running.wait()
    assert (final.finish_reason, final.completion_tokens, final.token_ids) == ("cancelled", 3, [])


def test_sampling_is_seeded_per_request(llama: nn.Module, engines: Callable[..., DecodeEngine]) -> None:
    ids = prompt(5, 50)
    sample = {"temperature": 0.8, "top_p": 0.9, "seed": 123}
    first = engines(llama)
    sink, _ = submit(first, ids, "a", 12, **sample)
    first.start()
    sink.wait()
    batched = engines(llama)
    others = [submit(batched, prompt(3 + i, 51 + i), s, 12, temperature=1.0, seed=i)[0] for i, s in enumerate(SETUPS)]
    again, _ = submit(batched, ids, "a", 12, **sample)
    other_seed, _ = submit(batched, ids, "a", 12, **{**sample, "seed": 7})
    batched.start()
    for s in [*others, again, other_seed]:
        s.wait()
    assert again.tokens == sink.tokens  # same seed, alone or among 5 companions
    assert other_seed.tokens != sink.tokens


@pytest.mark.parametrize("failing_call", [1, 2], ids=["prefill", "decode"])
def test_forward_error_fails_that_step_only(
    failing_call: int, llama: nn.Module, engines: Callable[..., DecodeEngine]
) -> None:
    calls = [0]
    forward = llama.forward

    def flaky_forward(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == failing_call:
            raise RuntimeError("boom")
        return forward(*args, **kw)

    llama.forward = flaky_forward
    engine = engines(llama)
    failed = [submit(engine, prompt(4 + i, 60 + i), s, 6)[0] for i, s in enumerate(SETUPS[:2])]
    engine.start()
    for sink in failed:
        final = sink.wait()
        assert (final.finish_reason, final.error) == ("error", "RuntimeError: boom")
    ids = prompt(5, 62)
    later, _ = submit(engine, ids, "b", 6)
    assert later.wait().finish_reason == "length"
    del llama.forward
    assert later.tokens == alone(llama, ids, "b", 6)


def test_raising_callback_drops_only_its_request(llama: nn.Module, engines: Callable[..., DecodeEngine]) -> None:
    engine = engines(llama)
    calls: list[GenerationEvent] = []

    def broken(event: GenerationEvent) -> None:
        calls.append(event)
        raise ValueError("client gone")

    engine.submit(GenerationRequest(prompt(4, 70), "a", 6, broken))
    ids = prompt(6, 71)
    sink, _ = submit(engine, ids, "b", 6)
    engine.start()
    sink.wait()
    assert len(calls) == 1  # no event after the one that raised
    assert sink.tokens == alone(llama, ids, "b", 6)


def test_stop_drains_then_refuses(llama: nn.Module, engines: Callable[..., DecodeEngine]) -> None:
    engine = engines(llama, max_batch=2)
    sinks = [submit(engine, prompt(4, 80 + i), s, 5)[0] for i, s in enumerate(SETUPS[:3])]  # one queued
    engine.start()
    engine.stop(drain=True, timeout=WAIT_S)
    assert [(s.events[-1].finish_reason, len(s.tokens)) for s in sinks] == [("length", 5)] * 3
    with pytest.raises(RuntimeError, match="stopped"):
        engine.submit(GenerationRequest(prompt(4, 83), "a", 5, Collector()))


def test_stop_without_drain_cancels_everything(llama: nn.Module, engines: Callable[..., DecodeEngine]) -> None:
    engine = engines(llama, max_batch=1)
    # Stop from inside the first event: deterministic, the worker sees it before its next step.
    running, _ = submit(engine, prompt(4, 90), "a", 40, on_nth={1: lambda: engine.stop(drain=False)})
    queued, _ = submit(engine, prompt(4, 91), "b", 40)
    engine.start()
    assert (running.wait().finish_reason, len(running.tokens)) == ("cancelled", 1)
    assert (queued.wait().finish_reason, queued.tokens) == ("cancelled", [])
    engine.stop(drain=False, timeout=WAIT_S)
    with pytest.raises(RuntimeError):
        engine.submit(GenerationRequest(prompt(4, 92), "a", 5, Collector()))


def test_invalid_requests_fail_at_submit(llama: nn.Module, engines: Callable[..., DecodeEngine]) -> None:
    engine = engines(llama)
    with pytest.raises(KeyError, match="zzz"):
        engine.submit(GenerationRequest([5, 6], Stack("a", "zzz"), 4, Collector()))
    with pytest.raises(ValueError, match="fusion"):
        engine.submit(GenerationRequest([5, 6], adaptune.Fuse("a", "b"), 4, Collector()))
    with pytest.raises(ValueError, match="empty"):
        engine.submit(GenerationRequest([], "a", 4, Collector()))
    assert engine.queue_depth == 0
