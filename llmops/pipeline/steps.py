"""The pipeline's steps before the provider call, each one call with one result:

authorize   the key as configured now (revoked or expired: 401)
resolve     the model and the messages (a prompt template rendered)
admit       the key's rate limits and budget, reserving this request's estimate
route       the candidates in order: the model asked for, then its fallbacks
cache plan  how this request uses the answer cache (the lookup is caching's cache_step)
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from caching.policies import policy_get
from caching.services import CachePlan, cache_plan
from llmops import catalog
from llmops.catalog import ApiKeyInfo, EndpointConfig
from llmops.errors import AuthenticationFailed, InvalidRequest, NotFound
from llmops.limits import Admission, limits_admit
from llmops.pipeline.types import InferenceRequest
from llmops.pricing import cost_usd
from llmops.prompts import prompt_render
from llmops.providers.base import ProviderCall
from llmops.usage import Usage, estimate_tokens


@dataclass(slots=True)
class Resolved:
    endpoint: EndpointConfig
    call: ProviderCall
    prompt_label: str
    cache: CachePlan | None


async def authorize(request: InferenceRequest) -> ApiKeyInfo:
    """The request's key as configured now: a socket or request that authenticated a while
    ago must not outlive the key's revocation, expiry or new limits."""
    key = await catalog.api_key_by_id(request.api_key.id)
    if key is None:
        raise AuthenticationFailed("Incorrect, revoked or expired API key.", code="invalid_api_key")
    return key


async def resolve(request: InferenceRequest) -> Resolved:
    endpoint = await catalog.endpoint_get(request.model)
    if endpoint is None or not endpoint.enabled:
        raise NotFound(
            f"The model {request.model!r} does not exist or is not enabled.", param="model", code="model_not_found"
        )
    messages = request.messages
    prompt_label = ""
    if request.prompt:
        prompt, messages = await prompt_render(
            reference=request.prompt, variables=request.variables, messages=request.messages
        )
        prompt_label = prompt.label
    if not messages:
        raise InvalidRequest("messages must be a non-empty list (or name a prompt).", param="messages")
    if request.simulate and endpoint.provider != "simulated":
        raise InvalidRequest("simulate applies only to simulated models.", param="simulate")
    policy = await policy_get(endpoint.name)
    plan = cache_plan(
        policy=policy,
        model=endpoint.name,
        target=f"{endpoint.provider}:{endpoint.upstream_model}@{endpoint.base_url}",
        messages=messages,
        params={**request.params, "simulate": request.simulate} if request.simulate else request.params,
        prompt=prompt_label,
        api_key_id=request.api_key.id,
        mode=request.cache_mode,
    )
    call = ProviderCall(
        messages=messages,
        params=request.params,
        simulate=request.simulate,
        prompt_cache=bool(policy and policy.prompt_caching),
    )
    return Resolved(endpoint, call, prompt_label, plan)


def estimated_usage(call: ProviderCall) -> Usage:
    """What a request will use at most, as far as can be told before it runs: its input,
    and the output it allows (max_tokens, else LLMOPS_ESTIMATED_OUTPUT_TOKENS)."""
    output = call.params.get("max_tokens") or settings.LLMOPS_ESTIMATED_OUTPUT_TOKENS
    return Usage(input_tokens=estimate_tokens("".join(m["content"] for m in call.messages)), output_tokens=output)


async def admit(key: ApiKeyInfo, resolved: Resolved) -> Admission:
    """Rate limits and budget, after the prompt resolved (tokens per minute need its size)."""
    usage = estimated_usage(resolved.call)
    return await limits_admit(
        key, tokens=usage.input_tokens + usage.output_tokens, cost=cost_usd(resolved.endpoint, usage)
    )


async def route(endpoint: EndpointConfig) -> list[EndpointConfig]:
    """The candidates in order: the model asked for, then its enabled fallbacks."""
    if not endpoint.fallbacks:
        return [endpoint]
    candidates = [endpoint]
    for name in endpoint.fallbacks:
        fallback = await catalog.endpoint_get(name)
        if fallback is not None and fallback.enabled and fallback not in candidates:
            candidates.append(fallback)
    return candidates
