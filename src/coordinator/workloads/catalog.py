"""The default Cargos: those the official SDKs use, plus two the reference Island runs."""

from __future__ import annotations

from typing import Any

CHAT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "minLength": 1},
        "system_prompt": {"type": "string"},
        "messages": {"type": "array"},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 32768},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    },
    "anyOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
}

IMAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1},
        "negative_prompt": {"type": "string"},
        "width": {"type": "integer", "minimum": 64, "maximum": 2048},
        "height": {"type": "integer", "minimum": 64, "maximum": 2048},
        "steps": {"type": "integer", "minimum": 1, "maximum": 150},
        "guidance_scale": {"type": "number", "minimum": 0, "maximum": 50},
        "seed": {"type": "integer", "minimum": 0},
        "scheduler": {"type": "string"},
    },
}

TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 100000}},
}

DEFAULT_CARGOS: list[dict[str, Any]] = [
    {
        "slug": "llm-chat",
        "name": "LLM Chat",
        "description": "Chat with a small open language model; streams tokens.",
        "runtime": "container",
        "kind": "chat",
        "container_image": "ghcr.io/archipelag-io/llm-chat:latest",
        "required_ram_mb": 2048,
        "required_cpu_cores": 1,
        "trust_level": 3,
        "price_per_job": 1,
        "input_schema": CHAT_SCHEMA,
        "is_default_chat": True,
        "cold_start_seconds": 120,
    },
    {
        "slug": "sdxl",
        "name": "Stable Diffusion XL",
        "description": "Text-to-image generation; returns a PNG.",
        "runtime": "container",
        "kind": "image",
        "container_image": "ghcr.io/archipelag-io/sdxl:latest",
        "required_ram_mb": 4096,
        "required_vram_mb": 6144,
        "trust_level": 3,
        "price_per_job": 5,
        "input_schema": IMAGE_SCHEMA,
        "cold_start_seconds": 300,
    },
    {
        "slug": "text-stats",
        "name": "Text statistics (WASM)",
        "description": "Counts words and characters of a text in a WASI sandbox.",
        "runtime": "wasm",
        "kind": "generic",
        "wasm_url": "/cargos/text-stats.wasm",
        "required_ram_mb": 64,
        "trust_level": 1,
        "price_per_job": 0.1,
        "input_schema": TEXT_SCHEMA,
        "cold_start_seconds": 30,
    },
    {
        "slug": "sentiment",
        "name": "Sentiment classification (ONNX)",
        "description": "Classifies a text as positive or negative.",
        "runtime": "onnx",
        "kind": "classification",
        "model_url": "hf://archipelag-io/sentiment-onnx",
        "onnx_task_type": "text-classification",
        "required_ram_mb": 512,
        "trust_level": 2,
        "price_per_job": 0.5,
        "input_schema": TEXT_SCHEMA,
        "cold_start_seconds": 60,
    },
]
