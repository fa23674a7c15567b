"""`manage.py batch submit|status|cancel`: a JSONL file from disk run as a batch through the
same services as the API, on the embedded executor of the command's own process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from llmops.batches.executor import EXECUTOR
from llmops.batches.models import Batch, BatchFile
from llmops.management.commands.batch import progress_text
from llmops.models import ApiKey
from tests.batches.conftest import batch_line, jsonl

ROOT = Path(__file__).resolve().parent.parent.parent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def cli(settings, seeded):
    """`manage.py batch ...` in process: returns (stdout, stderr)."""
    settings.LLMOPS_BATCH_EXECUTOR = "in_process"
    settings.LLMOPS_BATCH_POLL_S = 0.05

    def run(*args: str, stderr: io.StringIO | None = None) -> tuple[str, str]:
        out, err = io.StringIO(), stderr or io.StringIO()
        call_command("batch", *args, stdout=out, stderr=err)
        return out.getvalue(), err.getvalue()

    return run


def written(path: Path, lines: list) -> Path:
    path.write_bytes(jsonl(lines))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_file_of_ten_requests_runs_to_the_end_and_its_results_are_saved_beside_it(cli, tmp_path):
    source = written(
        tmp_path / "questions.jsonl", [batch_line(f"q-{i}", f"Question {i}", max_tokens=8) for i in range(10)]
    )

    out, err = cli("submit", str(source), "--wait")

    batch = Batch.objects.select_related("api_key").get()
    assert batch.status == "completed" and batch.completed == 10 and batch.failed == 0
    assert batch.api_key.name == "cli"
    saved = read_jsonl(tmp_path / "questions.output.jsonl")
    assert len(saved) == 10
    assert sorted(line["custom_id"] for line in saved) == sorted(f"q-{i}" for i in range(10))
    assert all(line["response"]["status_code"] == 200 for line in saved)
    assert (tmp_path / "questions.errors.jsonl").read_bytes() == b""
    assert str(tmp_path / "questions.output.jsonl") in out
    assert f"/v1/files/{batch.output_file_id}/content" in out
    assert f"Batch {batch.id} completed: 10 succeeded, 0 failed of 10" in out
    assert "runs in this process" in err
    # Not a terminal: plain progress lines, never redrawn.
    assert "\r" not in err
    assert err.splitlines()[-1].startswith(f"{batch.id} completed: 10/10 done, 0 failed, $")


def test_model_sets_every_lines_model_and_bare_chat_bodies_are_numbered_by_their_line(cli, tmp_path):
    bare = {"messages": [{"role": "user", "content": "A bare body"}], "max_tokens": 8}
    source = written(tmp_path / "mixed.jsonl", [batch_line("a"), batch_line("b", model="sim-small"), b"", bare])

    cli("submit", str(source), "--model", "sim-large", "--out", str(tmp_path / "results"))

    saved = read_jsonl(tmp_path / "results" / "mixed.output.jsonl")
    assert sorted(line["custom_id"] for line in saved) == ["a", "b", "line-4"]
    assert {line["response"]["body"]["model"] for line in saved} == {"sim-large"}
    assert Batch.objects.get().model == "sim-large"
    assert not (tmp_path / "mixed.output.jsonl").exists()


def test_bad_lines_are_reported_by_number_and_reason_and_nothing_runs(cli, tmp_path):
    get = {**batch_line("c"), "method": "GET"}
    lines = [batch_line("a"), b"", b"{not json", batch_line("b", model="no-such-model"), get]
    source = written(tmp_path / "bad.jsonl", lines)
    err = io.StringIO()

    with pytest.raises(CommandError, match="failed validation"):
        cli("submit", str(source), "--wait", stderr=err)

    reported = err.getvalue()
    # Numbered as in the file, its blank line 2 included.
    assert "line 1:" not in reported and "line 2:" not in reported
    assert "line 3: The line is not valid JSON" in reported
    assert "line 4: The model 'no-such-model' does not exist" in reported
    assert "line 5: method must be POST" in reported
    assert Batch.objects.get().status == "failed"
    assert not (tmp_path / "bad.output.jsonl").exists()


def test_an_unknown_key_is_a_clear_error_and_nothing_is_uploaded(cli, tmp_path):
    source = written(tmp_path / "one.jsonl", [batch_line("a")])

    with pytest.raises(CommandError, match="There is no API key named 'nobody'"):
        cli("submit", str(source), "--key", "nobody")

    assert not BatchFile.objects.exists()


def test_an_unknown_model_or_a_missing_file_is_a_clear_error(cli, tmp_path):
    source = written(tmp_path / "one.jsonl", [batch_line("a")])

    with pytest.raises(CommandError, match=r"Unknown model 'gpt-9'.*sim-small"):
        cli("submit", str(source), "--model", "gpt-9")
    with pytest.raises(CommandError, match="No such file"):
        cli("submit", str(tmp_path / "absent.jsonl"))
    with pytest.raises(CommandError, match="completion_window"):
        cli("submit", str(source), "--window", "2d")

    assert not BatchFile.objects.exists()


def test_it_acts_under_the_key_named_and_otherwise_under_one_cli_key_whose_secret_is_never_shown(
    cli, tmp_path, api_key
):
    source = written(tmp_path / "one.jsonl", [batch_line("a")])

    cli("submit", str(source), "--key", "tests")
    first, _ = cli("submit", str(source))
    second, _ = cli("submit", str(source))

    assert sorted(Batch.objects.values_list("api_key__name", flat=True)) == ["cli", "cli", "tests"]
    assert ApiKey.objects.filter(name="cli").count() == 1
    assert "llmops-" not in first + second  # the raw key's prefix


def test_a_terminal_sees_one_progress_line_redrawn_in_place(cli, tmp_path):
    source = written(tmp_path / "few.jsonl", [batch_line(f"q-{i}") for i in range(3)])
    terminal = Terminal()

    cli("submit", str(source), stderr=terminal)

    drawn = terminal.getvalue().split("\r")
    assert len(drawn) > 2  # drawn, then drawn over
    assert all("\n" not in frame for frame in drawn[1:-1])
    assert "3/3 done, 0 failed" in drawn[-1] and drawn[-1].endswith("\n")


def test_the_progress_line_shows_cost_against_the_estimate_and_the_time_left():
    progress = {
        "id": "batch_x",
        "status": "in_progress",
        "total": 10,
        "completed": 3,
        "failed": 1,
        "cost_usd": "0.0000120000",
        "estimated_cost_usd": "0.0000400000",
        "eta_s": 65.2,
    }

    text = progress_text(progress)

    assert text == "batch_x in_progress: 4/10 done, 1 failed, $0.000012 of at most $0.000040, ETA 1m05s"


def test_status_shows_a_batch_and_cancel_refuses_one_that_ended(cli, tmp_path):
    source = written(tmp_path / "one.jsonl", [batch_line("a")])
    cli("submit", str(source))
    batch = Batch.objects.get()

    out, _ = cli("status", batch.id)
    cli("status", batch.id, "--out", str(tmp_path / "saved"))

    assert f"Batch {batch.id} completed: 1 succeeded" in out
    assert f"GET /v1/files/{batch.output_file_id}/content" in out
    assert [line["custom_id"] for line in read_jsonl(tmp_path / "saved" / f"{batch.id}.output.jsonl")] == ["a"]
    with pytest.raises(CommandError, match="can no longer be cancelled"):
        cli("cancel", batch.id)
    with pytest.raises(CommandError, match="No such batch"):
        cli("status", "batch_none")
    with pytest.raises(CommandError, match="There is no API key named 'nobody'"):
        cli("status", batch.id, "--key", "nobody")


def test_with_the_executor_off_it_submits_and_leaves_the_batch_to_the_gateway(cli, settings, tmp_path):
    settings.LLMOPS_BATCH_EXECUTOR = "off"
    source = written(tmp_path / "one.jsonl", [batch_line("a")])

    out, err = cli("submit", str(source))

    batch = Batch.objects.get()
    assert batch.status == "validating"
    assert not EXECUTOR.running
    assert "a gateway process with an executor runs it" in err
    assert f"manage.py batch status {batch.id} --wait" in out


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_manage_py_exits_non_zero_naming_the_bad_lines_without_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'cli.sqlite3'}", LLMOPS_ALLOW_INSECURE_SECRET_KEY="true")
    assert manage(env, "migrate", "--noinput").returncode == 0
    source = written(tmp_path / "bad.jsonl", [batch_line("a"), b"[1, 2]"])  # an empty catalog: no model either

    refused = manage(env, "batch", "submit", str(source))

    assert refused.returncode == 1
    assert "line 1: The model 'sim-small' does not exist" in refused.stderr
    assert "line 2: The line must be a JSON object." in refused.stderr
    assert "Traceback" not in refused.stderr
