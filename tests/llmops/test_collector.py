"""Full garbage collections at idle moments (llmops/collector.py), and the request path
that makes them safe to defer: it leaves no cyclic garbage behind."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import auth
from tests.fakes.openai_server import fake_openai_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]

IDLE_SCRIPT = """
import gc, os, time, weakref
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
import django
django.setup()
from llmops import collector
from llmops.upstream import InFlight

class Node:
    pass

def old_cycle():
    # A cycle in the oldest generation, unreachable: only a full collection frees it.
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect(1)  # still referenced: moved to the oldest generation
    return weakref.ref(a)

collector.start()
assert gc.get_threshold()[1:] == (int(os.environ["LLMOPS_GC_YOUNG_COLLECTIONS"]), collector.NEVER), gc.get_threshold()
# Busy (an upstream call in flight): no full collection, however long it lasts.
InFlight.enter("m")
busy = old_cycle()
for _ in range(8):
    gc.collect(1)  # what the automatic schedule would run: young generations only
time.sleep(2.5)
print("busy", busy() is not None, collector.full_collections)
InFlight.leave("m")
time.sleep(3.5)
print("idle", busy() is not None, collector.full_collections)
"""


def test_full_collections_wait_for_an_idle_moment(tmp_path):
    env = {**os.environ, "LLMOPS_GC_FULL_EVERY_S": "1", "LLMOPS_GC_FULL_MAX_S": "60"}
    env["LLMOPS_GC_YOUNG_COLLECTIONS"] = "3"  # the setting, not Python's 10, decides
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "LLMOPS_ALLOW_INSECURE_SECRET_KEY": "true"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-c", IDLE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    busy, idle = done.stdout.splitlines()[-2:]
    assert busy == "busy True 0"  # the cycle survives while a call is in flight
    assert idle.startswith("idle False") and int(idle.split()[-1]) >= 1


@pytest.mark.django_db(transaction=True)
async def test_a_proxied_request_leaves_no_cyclic_garbage(http, api_key, fake_openai, settings):
    from tests.conftest import add_endpoint

    await add_endpoint(name="cyclefree", provider="openai", upstream_model="m", base_url=fake_openai.base_url)
    body = {"model": "cyclefree", "messages": [{"role": "user", "content": "warm"}]}
    for stream in (False, True):
        assert (
            await http.post("/v1/chat/completions", json={**body, "stream": stream}, headers=auth(api_key))
        ).status_code == 200
    gc.collect()
    # Whatever exists now is held until the end, so only what the requests below create can be
    # found as garbage: an earlier test's fake server, freed when its last idle connection thread
    # times out, would otherwise turn up here.
    existing = gc.get_objects()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for index in range(10):
            for stream in (False, True):
                ask = {"model": "cyclefree", "stream": stream, "messages": [{"role": "user", "content": f"q{index}"}]}
                response = await http.post("/v1/chat/completions", json=ask, headers=auth(api_key))
                assert response.status_code == 200
        gc.collect()
        found = [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        del existing
    assert found == []
