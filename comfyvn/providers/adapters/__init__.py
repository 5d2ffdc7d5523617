"""Adapters by provider kind; :func:`adapter_class` is the only lookup the service needs."""

from __future__ import annotations

from ..models import KINDS, QUOTA_KINDS
from .base import Adapter, AdapterError, Outcome
from .comfyui import ComfyUIAdapter
from .echo import EchoAdapter
from .http import HttpAdapter
from .openai import OpenAIAdapter
from .runpod import RunPodAdapter

__all__ = ["ADAPTERS", "Adapter", "AdapterError", "Outcome", "adapter_class"]

ADAPTERS: dict[str, type[Adapter]] = {
    cls.kind: cls
    for cls in (ComfyUIAdapter, RunPodAdapter, OpenAIAdapter, HttpAdapter, EchoAdapter)
}
assert set(ADAPTERS) == set(KINDS), "every kind needs an adapter"
assert {k for k, a in ADAPTERS.items() if a.supports_quota} == QUOTA_KINDS


def adapter_class(kind: str) -> type[Adapter]:
    return ADAPTERS[kind]
