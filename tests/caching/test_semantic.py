"""The semantic cache's parts: the local embedder (the real all-MiniLM-L6-v2), an
OpenAI-compatible embeddings endpoint from the catalog (a fake server on loopback), the
vector index and the stored form of a vector."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caching import semantic
from caching.semantic import EmbedderUnavailable, LocalEmbedder, OpenAIEmbedder, VectorIndex, embedder_get, pack, unpack
from llmops.providers.base import UpstreamError
from tests.conftest import add_endpoint
from tests.fakes.embeddings_server import FakeOpenAIEmbeddings, fake_embeddings_fixture, word_vector  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-fake-embeddings-SECRET-41c2"
MISSING = semantic.local_embedder_missing()


@pytest.fixture
def local() -> LocalEmbedder:
    if MISSING:
        # In CI a missing piece is a failure: the optional install is part of the CI profile.
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return semantic.local_embedder()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


# -- the local embedder --------------------------------------------------------------


async def test_the_local_embedder_gives_unit_float32_rows(local):
    vectors = await local.embed(["How do I reset my password?", "Bonjour", "x" * 5000])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 384) == (3, local.dimensions)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_paraphrases_score_higher_than_unrelated_sentences(local):
    question, paraphrase, unrelated, near = await local.embed(
        [
            "How can I lose weight quickly?",
            "What is the fastest way to lose weight?",
            "Which programming language should I learn first?",
            "How can I gain weight quickly?",
        ]
    )
    assert cosine(question, paraphrase) > 0.7
    assert cosine(question, unrelated) < 0.3
    assert cosine(question, paraphrase) > cosine(question, near) > cosine(question, unrelated)


async def test_the_same_text_always_embeds_the_same_way(local):
    text = "What is the capital of Australia?"
    alone = await local.embed([text])
    again = await local.embed([text])
    in_a_batch = await local.embed(["A much longer sentence that pads the batch to more tokens than the other.", text])
    assert np.array_equal(alone, again)
    assert np.allclose(alone[0], in_a_batch[1], atol=1e-5)


async def test_concurrent_embeds_queue_and_each_gets_its_own_answer(local):
    texts = [f"Question number {n} about the weather" for n in range(6)]
    together = await asyncio.gather(*(local.embed([text]) for text in texts))
    one_by_one = await local.embed(texts)
    for n, vectors in enumerate(together):
        assert np.allclose(vectors[0], one_by_one[n], atol=1e-5)


async def test_no_texts_embed_to_an_empty_matrix():
    # Nothing to encode loads nothing, installed or not.
    assert (await LocalEmbedder().embed([])).shape == (0, 384)


async def test_local_and_blank_name_the_process_wide_local_embedder():
    assert await embedder_get("local") is await embedder_get("") is semantic.local_embedder()


def test_it_loads_the_bundled_model_with_no_network(local):
    # A fresh process, in which any attempt to open a connection fails loudly.
    script = """
import socket
def refuse(*args, **kwargs):
    raise AssertionError(f"network access: {args}")
socket.socket.connect = refuse
socket.create_connection = refuse
from caching.semantic import LocalEmbedder
vectors = LocalEmbedder().embed_sync(["offline"])
print(vectors.shape)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "(1, 384)"
    assert "network access" not in done.stderr  # not even an attempt that was caught and logged
    assert "Loading weights" not in done.stderr


async def test_a_missing_install_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sentence_transformers" else real(name, *a)
    )
    with pytest.raises(EmbedderUnavailable, match=r"sentence-transformers.*pip install -r requirements-semantic\.txt"):
        await LocalEmbedder().embed(["hello"])


# -- an OpenAI-compatible endpoint from the catalog ----------------------------------


@pytest.fixture
async def embedding_model(fake_embeddings, monkeypatch, settings, transactional_db) -> str:
    settings.LLMOPS_UPSTREAM_TIMEOUT_S = 5.0
    monkeypatch.setenv("FAKE_EMBEDDINGS_API_KEY", KEY)
    fake_embeddings.expected_key = KEY
    await add_endpoint(
        name="fake-embed",
        provider="openai",
        upstream_model="text-embedding-fake",
        base_url=fake_embeddings.base_url,
        api_key_env="FAKE_EMBEDDINGS_API_KEY",
    )
    return "fake-embed"


@pytest.mark.django_db(transaction=True)
async def test_a_catalog_model_embeds_through_its_endpoint(embedding_model, fake_embeddings):
    embedder = await embedder_get(embedding_model)
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.name == "fake-embed"
    assert embedder.dimensions is None
    texts = ["the cat sat on the mat", "the cat sat on a mat", "stock prices fell sharply"]
    vectors = await embedder.embed(texts)
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 32)
    assert embedder.dimensions == 32
    # The fake's vectors are not of length 1: these are normalised here.
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    expected = word_vector(texts[0], 32)
    assert np.allclose(vectors[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    [request] = fake_embeddings.requests
    assert request.path == "/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "text-embedding-fake"
    assert request.body["input"] == texts
    assert request.body["encoding_format"] == "base64"


@pytest.mark.django_db(transaction=True)
async def test_a_server_that_answers_floats_works_as_well(embedding_model, fake_embeddings):
    fake_embeddings.ignores_encoding_format = True
    vectors = await (await embedder_get(embedding_model)).embed(["plain floats please"])
    expected = word_vector("plain floats please", 32)
    assert np.allclose(vectors[0], expected / np.linalg.norm(expected), atol=1e-6)


@pytest.mark.django_db(transaction=True)
async def test_the_same_catalog_model_is_the_same_embedder(embedding_model):
    assert await embedder_get(embedding_model) is await embedder_get(embedding_model)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("upstream_status", "status"), [(429, 429), (500, 502), (401, 502)])
async def test_upstream_failures_are_upstream_errors(embedding_model, fake_embeddings, upstream_status, status):
    fake_embeddings.fail(upstream_status)
    with pytest.raises(UpstreamError) as raised:
        await (await embedder_get(embedding_model)).embed(["hello"])
    assert raised.value.status == status
    assert KEY not in raised.value.message


@pytest.mark.django_db(transaction=True)
async def test_a_missing_provider_key_is_an_upstream_error(embedding_model, fake_embeddings, monkeypatch):
    monkeypatch.delenv("FAKE_EMBEDDINGS_API_KEY")
    with pytest.raises(UpstreamError, match="FAKE_EMBEDDINGS_API_KEY is not set"):
        await (await embedder_get(embedding_model)).embed(["hello"])
    assert not fake_embeddings.requests


@pytest.mark.django_db(transaction=True)
async def test_an_unknown_model_is_a_clear_error():
    with pytest.raises(EmbedderUnavailable, match="No model named 'nope' in the catalog"):
        await embedder_get("nope")


@pytest.mark.django_db(transaction=True)
async def test_only_openai_compatible_models_can_embed():
    await add_endpoint(name="sim-embed", provider="simulated", upstream_model="")
    with pytest.raises(EmbedderUnavailable, match="OpenAI-compatible"):
        await embedder_get("sim-embed")


@pytest.mark.django_db(transaction=True)
async def test_a_disabled_model_does_not_embed():
    await add_endpoint(name="off-embed", provider="openai", upstream_model="x", enabled=False)
    with pytest.raises(EmbedderUnavailable, match="disabled"):
        await embedder_get("off-embed")


# -- the index ------------------------------------------------------------------------


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def random_units(count: int, dimensions: int = 16, seed: int = 7) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dimensions)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_an_empty_index_finds_nothing():
    index = VectorIndex()
    assert len(index) == 0
    assert index.search(unit(1, 0, 0)) is None
    assert VectorIndex(dimensions=3).search(unit(1, 0, 0)) is None


def test_it_finds_the_most_similar_entry_and_its_cosine():
    index = VectorIndex()
    index.add(1, unit(1, 0, 0))
    index.add("two", unit(0, 1, 0))
    index.add(3, unit(1, 1, 0))
    entry_id, similarity = index.search(unit(1, 0.1, 0))
    assert entry_id == 1
    assert similarity == pytest.approx(float(unit(1, 0.1, 0)[0]), abs=1e-6)
    assert index.search(unit(0, 1, 0)) == ("two", pytest.approx(1.0, abs=1e-6))
    assert len(index) == 3
    assert "two" in index


def test_added_vectors_are_scaled_to_length_one():
    index = VectorIndex()
    index.add(1, np.array([3.0, 4.0], dtype=np.float32))
    assert index.search(unit(3, 4)) == (1, pytest.approx(1.0, abs=1e-6))


def test_adding_an_id_again_replaces_its_vector():
    index = VectorIndex()
    index.add(1, unit(1, 0))
    index.add(2, unit(0, 1))
    index.add(1, unit(-1, 0.2))
    assert len(index) == 2
    assert index.search(unit(1, 0))[0] == 2
    assert index.search(unit(-1, 0)) == (1, pytest.approx(float(unit(-1, 0.2)[0] * -1), abs=1e-6))


def test_removed_entries_are_never_found_and_the_rest_still_are():
    vectors = random_units(10)
    index = VectorIndex()
    for n, vector in enumerate(vectors):
        index.add(n, vector)
    assert index.remove(3) and index.remove(9) and index.remove(0)
    assert not index.remove(3)
    assert len(index) == 7
    assert 3 not in index
    for n, vector in enumerate(vectors):
        found, similarity = index.search(vector)
        if n in (0, 3, 9):
            assert found != n and similarity < 0.999
        else:
            assert (found, similarity) == (n, pytest.approx(1.0, abs=1e-5))
    for n in (1, 2, 4, 5, 6, 7, 8):
        index.remove(n)
    assert len(index) == 0
    assert index.search(vectors[1]) is None


def test_it_grows_past_its_capacity_and_finds_every_vector():
    vectors = random_units(1000, dimensions=24)
    index = VectorIndex(dimensions=24, capacity=4)
    for n, vector in enumerate(vectors):
        index.add(f"entry-{n}", vector)
    assert len(index) == 1000
    for n in (0, 3, 4, 511, 999):
        assert index.search(vectors[n]) == (f"entry-{n}", pytest.approx(1.0, abs=1e-5))


def test_a_vector_of_other_dimensions_is_refused():
    index = VectorIndex()
    index.add(1, unit(1, 0, 0))
    with pytest.raises(ValueError, match="2 dimensions in an index of 3"):
        index.add(2, unit(1, 0))
    assert len(index) == 1


# -- storage ---------------------------------------------------------------------------


def test_a_packed_vector_unpacks_to_the_same_values():
    vector = random_units(1, dimensions=384)[0]
    data = pack(vector)
    assert isinstance(data, bytes)
    assert len(data) == 384 * 4
    assert np.array_equal(unpack(data), vector)
    assert unpack(data).dtype == np.float32
    assert np.array_equal(unpack(memoryview(data)), vector)
    assert np.array_equal(unpack(pack(np.asarray(vector, dtype=np.float64))), vector)


def test_a_truncated_vector_is_refused():
    with pytest.raises(ValueError, match="not a whole number"):
        unpack(b"\x00" * 7)
