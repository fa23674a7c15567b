"""Provider registry: a provider is one module implementing `ChatProvider`."""

from __future__ import annotations

from llmops.providers.anthropic import AnthropicProvider
from llmops.providers.base import ChatProvider
from llmops.providers.local import LocalProvider
from llmops.providers.openai import OpenAIProvider
from llmops.providers.simulated import SimulatedProvider

PROVIDERS: dict[str, ChatProvider] = {
    provider.name: provider
    for provider in (OpenAIProvider(), AnthropicProvider(), LocalProvider(), SimulatedProvider())
}


def provider_for(name: str) -> ChatProvider:
    return PROVIDERS[name]
