"""Pure assembly of one job's output stream: seq ordering per runtime convention, final chunks, result.

No I/O: `JobAssembly` takes the Island's messages and returns the consumer events to emit, in order
(island-protocol §4.7–4.9, client-api §7.3)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

# Runtimes whose token chunks start at seq 0 (GGUF, ONNX); container and WASM start at 1.
SEQ_FROM_ZERO = frozenset({"llmcpp", "onnx"})
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
# Where a job's token counts come from: the Island's report, or counted by the coordinator.
TOKEN_SOURCES = ("island", "counted")


def first_seq(runtime: str) -> int:
    return 0 if runtime in SEQ_FROM_ZERO else 1


def parse_done_chunk(chunk: str) -> dict[str, Any] | None:
    """The usage of a GGUF final chunk `{"type":"done","usage":{…}}`; None if it is not one."""
    try:
        value = json.loads(chunk)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("type") != "done":
        return None
    usage = value.get("usage")
    return clean_usage(usage) if isinstance(usage, dict) else {}


def clean_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    """Token counts that are non-negative integers, with `total_tokens` filled in when missing."""
    out: dict[str, int] = {}
    for key in USAGE_KEYS:
        value = (usage or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[key] = value
    if "total_tokens" not in out and ("prompt_tokens" in out or "completion_tokens" in out):
        out["total_tokens"] = out.get("prompt_tokens", 0) + out.get("completion_tokens", 0)
    return out


def image_output(image_data: str, format: str, width: int, height: int, seed: int | None) -> dict[str, Any]:
    """The object stored (JSON-encoded) as an image job's `output`: the JobImageOutput minus `job_id`."""
    image: dict[str, Any] = {"image_data": image_data, "format": format, "width": width, "height": height}
    if seed is not None:
        image["seed"] = seed
    return image


@dataclass
class JobAssembly:
    """The ordering and result of one attempt of one job's output."""

    runtime: str
    # The Cargo's kind: an `image` job is complete with its image only (the Island's final chunk from the
    # exit code may overtake it).
    kind: str = ""
    next_seq: int = 0
    held: dict[int, tuple[str, bool]] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)
    final_seen: bool = False
    image: dict[str, Any] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    # Token events released (one per output chunk with text): the completion count when the Island
    # reports none.
    token_chunks: int = 0
    # Resumed from another replica's stream: the next chunk's seq continues it, whatever its number.
    adopt_next_seq: bool = False

    def __post_init__(self) -> None:
        self.next_seq = first_seq(self.runtime)

    @classmethod
    def resumed(cls, runtime: str, kind: str, tokens: list[str]) -> JobAssembly:
        """The assembly of an attempt whose first `tokens` another replica already emitted (it owned the
        stream and is gone): they count towards the output, and the next chunk to arrive continues them."""
        return cls(runtime, kind, parts=list(tokens), adopt_next_seq=True, token_chunks=len(tokens))

    @property
    def complete(self) -> bool:
        """The last piece of output has arrived (final chunk with nothing missing before it, or image)."""
        if self.kind == "image":
            return self.image is not None
        return (self.final_seen and not self.held) or self.image is not None

    def chunk(self, seq: int, chunk: str, is_final: bool) -> list[dict[str, Any]]:
        """Accept a chunk; the `token` events it releases, in seq order (held chunks wait for the gap)."""
        if self.adopt_next_seq:
            self.adopt_next_seq = False
            self.next_seq = max(seq, first_seq(self.runtime))
        if seq < self.next_seq or seq in self.held or self.final_seen:
            return []  # duplicate, or after the end
        self.held[seq] = (chunk, is_final)
        events: list[dict[str, Any]] = []
        while self.next_seq in self.held:
            text, final = self.held.pop(self.next_seq)
            self.next_seq += 1
            events.extend(self._release(text, final))
            if final:
                self.held.clear()  # anything numbered after the final chunk is not output
                break
        return events

    def release_held(self) -> list[dict[str, Any]]:
        """At finalisation: give up on missing chunks and release what is held, in seq order."""
        events: list[dict[str, Any]] = []
        for seq in sorted(self.held):
            text, final = self.held.pop(seq)
            events.extend(self._release(text, final))
        return events

    def _release(self, text: str, final: bool) -> list[dict[str, Any]]:
        if final:
            self.final_seen = True
            if self.runtime == "llmcpp":
                usage = parse_done_chunk(text)
                if usage is not None:
                    self.usage.update(usage)
                    return []  # the GGUF done event is not text the user sees
        if not text:
            return []
        self.parts.append(text)
        self.token_chunks += 1
        return [{"type": "token", "content": text}]

    def set_image(
        self, image_data: str, format: str, width: int, height: int, seed: int | None
    ) -> dict[str, Any] | None:
        if self.image is not None:
            return None
        self.image = image_output(image_data, format, width, height, seed)
        event: dict[str, Any] = {
            "type": "image",
            "image_data": image_data,
            "format": format,
            "width": width,
            "height": height,
        }
        if seed is not None:
            event["seed"] = seed
        return event

    def output(self) -> str | None:
        """The job's final `output`: image JSON, or the concatenated text (ONNX: its result JSON)."""
        if self.image is not None:
            return json.dumps(self.image, separators=(",", ":"), ensure_ascii=False)
        if not self.parts:
            return None
        return "".join(self.parts)


# Characters per token of the prompt estimate (the usual rule of thumb for English text and BPE models).
CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """Tokens of a text of `chars` characters, one per `CHARS_PER_TOKEN`."""
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def counted_usage(reported: dict[str, int], token_chunks: int, prompt_chars: int | None) -> dict[str, Any]:
    """The job's token usage: the Island's counts when it reported them (`tokens_source: island`); else
    the streamed token chunks as `completion_tokens` and a prompt estimate of one token per
    `CHARS_PER_TOKEN` characters (`tokens_source: counted`). Jobs that streamed no text get no counts."""
    usage: dict[str, Any] = clean_usage(reported)
    if "completion_tokens" in usage:
        return {**usage, "tokens_source": "island"}
    if token_chunks <= 0:
        return usage
    usage["completion_tokens"] = token_chunks
    usage.setdefault("prompt_tokens", estimate_tokens(prompt_chars or 0))
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    usage["tokens_source"] = "counted"
    return usage


def done_usage(token_usage: dict[str, Any], credits_used: float) -> dict[str, Any]:
    """The `usage` object of the `done` event: every field present, never null."""
    usage = clean_usage(token_usage)
    body: dict[str, Any] = {
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
        "credits_used": float(credits_used),
    }
    if token_usage.get("tokens_source") in TOKEN_SOURCES:
        body["tokens_source"] = token_usage["tokens_source"]
    return body
