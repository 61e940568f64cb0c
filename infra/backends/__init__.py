"""Model backends, chosen by an explicit mapping from the config's ``kind``.

Backends are built where they run (inside a Ray actor), never at import time: this module
imports no heavy library.
"""

from __future__ import annotations

from infra.backends.base import TextGenerator
from infra.config import LlamaCppBackend, OpenAIBackend, TinyBackend, VLLMBackend


def _tiny(cfg: TinyBackend) -> TextGenerator:
    from infra.backends.tiny import TinyGenerator

    return TinyGenerator(cfg)


def _llamacpp(cfg: LlamaCppBackend) -> TextGenerator:
    from infra.backends.llamacpp import LlamaCppGenerator

    return LlamaCppGenerator(cfg)


def _openai(cfg: OpenAIBackend) -> TextGenerator:
    from infra.backends.openai import OpenAIGenerator

    return OpenAIGenerator(cfg)


def _vllm(cfg: VLLMBackend) -> TextGenerator:
    from infra.backends.vllm import VLLMGenerator

    return VLLMGenerator(cfg)


BUILDERS = {"tiny": _tiny, "llamacpp": _llamacpp, "openai": _openai, "vllm": _vllm}


def build_backend(cfg) -> TextGenerator:
    """Build the backend named by ``cfg.kind`` (raises BackendUnavailable if it cannot)."""
    return BUILDERS[cfg.kind](cfg)
