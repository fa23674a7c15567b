"""The pipeline's steps before the provider call, each one call with one result:

authorize   the key as configured now (revoked or expired: 401)
resolve     the messages (a prompt template rendered)
route       routing's choice: the candidates in order (a model and its fallbacks, or a
            cascade) and why
admit       the key's rate limits and budget, reserving this request's estimate
cache plan  how this request uses the answer cache (the lookup is caching's cache_step)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from caching.policies import policy_get
from caching.services import CachePlan, cache_plan
from llmops import catalog
from llmops.catalog import ApiKeyInfo
from llmops.errors import AuthenticationFailed, InvalidRequest
from llmops.limits import Admission, limits_admit
from llmops.pipeline.types import InferenceRequest
from llmops.pricing import ZERO, cost_usd
from llmops.prompts import prompt_render
from llmops.providers.base import ProviderCall
from llmops.usage import Usage, estimate_tokens
from routing.services import RoutePlan, route_choose
from routing.types import Features


@dataclass(slots=True)
class Resolved:
    call: ProviderCall
    prompt_label: str
    prompt_name: str = ""
    estimate: Usage = field(default_factory=Usage)  # at most what it will use: routing and limits read it


async def authorize(request: InferenceRequest) -> ApiKeyInfo:
    """The request's key as configured now: a socket or request that authenticated a while
    ago must not outlive the key's revocation, expiry or new limits."""
    key = await catalog.api_key_by_id(request.api_key.id)
    if key is None:
        raise AuthenticationFailed("Incorrect, revoked or expired API key.", code="invalid_api_key")
    return key


async def resolve(request: InferenceRequest) -> Resolved:
    messages = request.messages
    prompt_label = prompt_name = ""
    if request.prompt:
        prompt, messages = await prompt_render(
            reference=request.prompt, variables=request.variables, messages=request.messages
        )
        prompt_label, prompt_name = prompt.label, prompt.name
    if not messages:
        raise InvalidRequest("messages must be a non-empty list (or name a prompt).", param="messages")
    call = ProviderCall(messages=messages, params=request.params, simulate=request.simulate, batch=request.batch)
    return Resolved(call, prompt_label, prompt_name, estimated_usage(call))


async def route(request: InferenceRequest, resolved: Resolved) -> RoutePlan:
    """Routing's choice for this request (a model named directly: it, then its fallbacks)."""
    messages = resolved.call.messages
    features = Features(
        task_type=request.task_type,
        complexity=request.complexity,
        prompt=resolved.prompt_name,
        input_tokens=resolved.estimate.input_tokens,
        last_user=next((m["content"] for m in reversed(messages) if m["role"] == "user"), ""),
        metadata=request.metadata,
    )
    plan = await route_choose(request.model, features, request.limits)
    if request.simulate and not plan.route and plan.first.provider != "simulated":
        raise InvalidRequest("simulate applies only to simulated models.", param="simulate")
    return plan


async def cache_plan_for(request: InferenceRequest, resolved: Resolved, plan: RoutePlan) -> CachePlan | None:
    """A route's answers are cached under the route and its configuration, whichever of its
    models answered; a model's under the model and where it runs."""
    if plan.route:
        # The route's configuration, the rule that matched (another rule may send elsewhere),
        # under limits the option chosen, and where its models run (repointing one starts afresh).
        chosen = plan.option if plan.rule == "limits" else ""
        runs = sorted({f"{e.provider}:{e.upstream_model}@{e.base_url}" for e in plan.candidates or plan.endpoints})
        name = f"route:{plan.route}"
        target = f"{name}#{plan.fingerprint}#{plan.rule}#{chosen}|{','.join(runs)}"
    else:
        endpoint = plan.first
        name, target = endpoint.name, f"{endpoint.provider}:{endpoint.upstream_model}@{endpoint.base_url}"
    policy = await policy_get(name)
    resolved.call.prompt_cache = bool(policy and policy.prompt_caching)
    params = request.params
    if request.simulate:
        params = {**params, "simulate": request.simulate}
    return cache_plan(
        policy=policy,
        model=name,
        target=target,
        messages=resolved.call.messages,
        params=params,
        prompt=resolved.prompt_label,
        api_key_id=request.api_key.id,
        mode=request.cache_mode,
    )


def estimated_usage(call: ProviderCall) -> Usage:
    """What a request will use at most, as far as can be told before it runs: its input,
    and the output it allows (max_tokens, else LLMOPS_ESTIMATED_OUTPUT_TOKENS)."""
    output = call.params.get("max_tokens") or settings.LLMOPS_ESTIMATED_OUTPUT_TOKENS
    return Usage(input_tokens=estimate_tokens("".join(m["content"] for m in call.messages)), output_tokens=output)


async def admit(key: ApiKeyInfo, resolved: Resolved, plan: RoutePlan) -> Admission:
    """Rate limits and budget, once the route is known (the estimate needs its prices: for a
    cascade, every step's, as it may ask them all)."""
    usage = resolved.estimate
    cost = sum((cost_usd(endpoint, usage) for endpoint in plan.endpoints), ZERO)
    return await limits_admit(key, tokens=usage.input_tokens + usage.output_tokens, cost=cost)
