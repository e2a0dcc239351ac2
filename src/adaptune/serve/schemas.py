"""Request bodies (pydantic): strict types, so ``"texts": [1, 2]`` is an error naming ``texts[0]``, not a cast."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

__all__ = ["ChatMessage", "ChatRequest", "ClassifyRequest", "CompletionRequest", "LoadRequest"]

Number = StrictFloat | StrictInt


class ClassifyRequest(BaseModel):
    """``POST /v1/classify``."""

    model_config = ConfigDict(extra="forbid")
    adapter: StrictStr = Field(description="a loaded adapter or fusion, or a composition such as 'Stack(a, b)'")
    texts: list[StrictStr] = Field(min_length=1, description="the texts to label")
    truncate: StrictBool = Field(False, description="cut texts longer than the model accepts instead of a 413")


class LoadRequest(BaseModel):
    """``POST /v1/adapters``."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr | None = None
    path: StrictStr = Field(min_length=1, description="a folder under the server's --adapter-root")


class _Sampling(BaseModel):
    # OpenAI clients send fields we do not use (user, logit_bias, ...): ignore those rather than refuse them
    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Number = Field(1.0, ge=0, le=2)
    top_p: Number = Field(1.0, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = Field(None, description="up to 4 stop strings")
    stream: StrictBool = False
    seed: StrictInt | None = None
    n: StrictInt = Field(1, ge=1, le=1, description="one choice per request")
    ignore_eos: StrictBool = Field(False, description="extension (as in vLLM): generate max_tokens tokens")

    def stops(self) -> list[str]:
        """``stop`` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (OpenAI-compatible subset)."""

    prompt: StrictStr


class ChatMessage(BaseModel):
    """One message of a chat."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions`` (OpenAI-compatible subset)."""

    messages: list[ChatMessage] = Field(min_length=1)
