"""`manage.py batch submit|status|cancel`: OpenAI-style JSONL batches from the command line,
through the same services (and so the same validation) as /v1/files and /v1/batches."""

from __future__ import annotations

import json
import tempfile
import time
from argparse import RawDescriptionHelpFormatter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from llmops.auth import key_material
from llmops.batches import files, services
from llmops.batches.executor import EXECUTOR
from llmops.batches.models import Batch, BatchStatus
from llmops.batches.progress import batch_progress
from llmops.catalog import ApiKeyInfo
from llmops.errors import GatewayError
from llmops.models import ApiKey, ModelEndpoint

CLI_KEY = "cli"
ENDPOINT = "/v1/chat/completions"
REQUEST_FIELDS = frozenset(("custom_id", "method", "url", "body"))
POLL_S = 0.25
SPOOL_BYTES = 8 * 1024 * 1024

RUNS_WHERE = {
    "in_process": "No broker (LLMOPS_BATCH_EXECUTOR=in_process): the batch runs in this process.",
    "celery": "Dispatched to the Celery workers.",
    "off": "LLMOPS_BATCH_EXECUTOR=off: a gateway process with an executor runs it, not this one.",
}

SUBMIT_HELP = """\
Upload FILE (JSONL) and run it as a batch of chat completions under an API key.

Each line is an OpenAI batch request ({"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}), or a bare chat body ({"model", "messages", ...},
with none of custom_id/method/url/body), which is sent with custom_id "line-N" (N its line
number). --model sets every body's model. Blank lines are skipped. Every line is checked
before anything runs; a bad line is reported with its number and reason, and the command
exits non-zero.

Where it runs: with a broker (LLMOPS_BATCH_EXECUTOR=celery) the Celery workers run it,
and --wait follows it. Without one (in_process, the default) the batch runs inside this
command, which therefore always waits until it ends, as with --wait (stopping it with
Ctrl-C leaves the batch to a gateway server, whose executor resumes it). With
LLMOPS_BATCH_EXECUTOR=off nothing here runs it; another gateway process must.

Waiting shows the progress on stderr, then saves the output and error files next to FILE
(for NAME.jsonl: NAME.output.jsonl and NAME.errors.jsonl, or in --out DIR; an empty errors
file means no item failed) and prints their paths, file ids and API URLs. The command exits
non-zero unless the batch completed.

Acts under --key NAME, or by default under the key named "cli", made on first use (its
raw key is never issued)."""


class Command(BaseCommand):
    help = "JSONL batches from the command line: `batch submit FILE.jsonl`, `batch status ID`, `batch cancel ID`."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="{submit,status,cancel}")
        submit = actions.add_parser(
            "submit",
            help="Upload a JSONL file and run it as a batch.",
            description=SUBMIT_HELP,
            formatter_class=RawDescriptionHelpFormatter,
        )
        submit.add_argument("file", help="The JSONL file of requests (or bare chat bodies).")
        submit.add_argument("--model", help="Set every request's body.model to this catalog model.")
        submit.add_argument("--wait", action="store_true", help="Follow the batch until it ends and save its files.")
        submit.add_argument("--window", default="24h", help="completion_window: up to 24h, e.g. 24h, 30m (24h).")
        submit.add_argument("--out", help="Save the output and error files in this directory (default: FILE's).")
        _key_argument(submit)
        status = actions.add_parser("status", help="Show a batch; --wait follows it, --out saves its files.")
        status.add_argument("batch_id")
        status.add_argument("--wait", action="store_true", help="Follow the batch until it ends.")
        status.add_argument("--out", help="Save its files here, as BATCH_ID.output.jsonl and BATCH_ID.errors.jsonl.")
        _key_argument(status)
        cancel = actions.add_parser("cancel", help="Cancel a batch: the items left stop, finished results are kept.")
        cancel.add_argument("batch_id")
        _key_argument(cancel)

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        executor_was_running = EXECUTOR.running
        try:
            if action == "submit":
                self.submit(**options)
            elif action == "status":
                self.status(**options)
            else:
                self.cancel(**options)
        except GatewayError as exc:
            raise CommandError(exc.message) from None
        finally:
            if not executor_was_running:
                # Runners stopped here hand their items back; a gateway server resumes them.
                EXECUTOR.stop()

    # --- the subcommands ---

    def submit(self, *, file: str, model: str | None, wait: bool, window: str, out: str | None, key: str | None, **_):
        source = Path(file)
        if not source.is_file():
            raise CommandError(f"No such file: {source}.")
        out_dir = _out_dir(out, source.parent)
        if model is not None:
            _model_check(model)
        services.completion_window_seconds(window)
        api_key = _api_key(key)
        try:
            with source.open("rb") as lines, tempfile.SpooledTemporaryFile(SPOOL_BYTES) as upload:
                upload.writelines(_request_lines(lines, model=model))
                upload.seek(0)
                stored = files.file_create(api_key_id=api_key.id, upload=upload, filename=source.name, purpose="batch")
        except OSError as exc:
            raise CommandError(f"Could not read {source}: {exc.strerror or exc}.") from None
        batch = services.batch_create(
            api_key_id=api_key.id, input_file_id=stored.id, endpoint=ENDPOINT, completion_window=window
        )
        self.stdout.write(
            f"Batch {batch.id} created under the key {api_key.name!r}: input file {stored.id} "
            f"({stored.line_count} lines)."
        )
        executor = settings.LLMOPS_BATCH_EXECUTOR
        self.notice(RUNS_WHERE[executor])
        if not wait and executor != "in_process":
            self.stdout.write(f"Follow it with: manage.py batch status {batch.id} --wait")
            return
        stem = source.name.removesuffix(".jsonl")
        self.finish(self.follow(batch, runs_here=executor == "in_process"), out_dir, stem)

    def status(self, *, batch_id: str, wait: bool, out: str | None, key: str | None, **_):
        api_key = _api_key(key, create=False)
        batch = services.batch_get(api_key_id=api_key.id, batch_id=batch_id)
        if wait and not batch.ended:
            runs_here = settings.LLMOPS_BATCH_EXECUTOR == "in_process"
            if runs_here:
                EXECUTOR.start()  # resumes it here unless a live runner holds it
            batch = self.follow(batch, runs_here=runs_here)
        if out is not None and batch.ended:
            self.finish(batch, _out_dir(out, Path.cwd()), batch.id)
            return
        if out is not None:
            self.notice(f"Not saved: {batch.id} is {batch.status}; its files exist once it ended (add --wait).")
        self.stdout.write(batch_summary(batch))
        self.stdout.write(f"input: file {batch.input_file_ref}")
        for label, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            if file_id:
                self.stdout.write(f"{label}: file {file_id}, GET /v1/files/{file_id}/content")
        if batch.status == BatchStatus.FAILED:
            self.validation_errors(batch)

    def cancel(self, *, batch_id: str, key: str | None, **_):
        api_key = _api_key(key, create=False)
        batch = services.batch_cancel(api_key_id=api_key.id, batch_id=batch_id)
        if settings.LLMOPS_BATCH_EXECUTOR == "in_process":
            # This process's executor may be the one that ends it (nobody else ran it).
            batch = self.follow(batch, runs_here=True)
        self.stdout.write(batch_summary(batch))

    # --- following a batch and saving its results ---

    def follow(self, batch: Batch, *, runs_here: bool) -> Batch:
        progress = ProgressLine(self.stderr)
        try:
            while True:
                batch = services.batch_get(api_key_id=batch.api_key_id, batch_id=batch.id)
                progress.show(batch_progress(batch), final=batch.ended)
                if batch.ended:
                    return batch
                if runs_here and not EXECUTOR.running:
                    raise CommandError(f"The embedded executor stopped (see its log): {batch.id} is {batch.status}.")
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            where = "a gateway server resumes it" if runs_here else "the workers keep running it"
            raise CommandError(
                f"Stopped following {batch.id} ({batch.status}): {where}; `manage.py batch status {batch.id} --wait` "
                "follows it again.",
                returncode=130,
            ) from None
        finally:
            progress.close()

    def finish(self, batch: Batch, out_dir: Path, stem: str) -> None:
        self.stdout.write(batch_summary(batch))
        if batch.status == BatchStatus.FAILED:
            count = self.validation_errors(batch)
            raise CommandError(f"Batch {batch.id} failed validation ({count} errors above): nothing ran.")
        out_dir.mkdir(parents=True, exist_ok=True)
        for suffix, file_id, empty in (
            ("output", batch.output_file_id, "no item succeeded"),
            ("errors", batch.error_file_id, "no item failed"),
        ):
            path = out_dir / f"{stem}.{suffix}.jsonl"
            try:
                with path.open("wb") as saved:
                    if file_id:
                        saved.writelines(files.file_parts(file_id))
            except OSError as exc:
                raise CommandError(f"Could not write {path}: {exc.strerror or exc}.") from None
            where = f"file {file_id}, GET /v1/files/{file_id}/content" if file_id else f"empty: {empty}"
            self.stdout.write(f"{suffix}: {path} ({where})")
        if batch.status != BatchStatus.COMPLETED:
            raise CommandError(f"Batch {batch.id} ended {batch.status}: its finished results are saved above.")

    def notice(self, text: str) -> None:
        self.stderr.write(text, style_func=str)  # not in the red of errors

    def validation_errors(self, batch: Batch) -> int:
        errors = (batch.errors or {}).get("data", [])
        for error in errors:
            where = f"line {error['line']}" if error.get("line") else "file"
            self.stderr.write(f"{where}: {error.get('message')} ({error.get('code')})")
        return len(errors)


def _key_argument(parser) -> None:
    parser.add_argument("--key", help=f'The name of the API key to act under (default "{CLI_KEY}", made on first use).')


def _api_key(name: str | None, *, create: bool = True) -> ApiKeyInfo:
    """The key named `name`, or the command's own key, made on first use like a staff
    member's playground key: its raw key is never issued, so nothing can present it."""
    wanted = name if name is not None else CLI_KEY
    found = list(ApiKey.objects.filter(name=wanted).order_by("id"))
    usable = [info for info in map(ApiKeyInfo.from_model, (k for k in found if k.is_active)) if not info.expired]
    if name is None and not found and create:
        _, prefix, digest = key_material()
        return ApiKeyInfo.from_model(ApiKey.objects.create(name=CLI_KEY, prefix=prefix, key_hash=digest))
    if not found:
        raise CommandError(f"There is no API key named {wanted!r} (`manage.py create_api_key NAME` makes one).")
    if not usable:
        raise CommandError(f"The API key {wanted!r} is revoked or expired.")
    if len(usable) > 1:
        raise CommandError(f"{len(usable)} active API keys are named {wanted!r}: rename one in the admin.")
    return usable[0]


def _model_check(model: str) -> None:
    if model == "auto" or model.startswith("route:"):
        return  # routes are checked with each line
    if not ModelEndpoint.objects.filter(name=model, enabled=True).exists():
        names = ModelEndpoint.objects.filter(enabled=True).order_by("name").values_list("name", flat=True)
        raise CommandError(f"Unknown model {model!r}: no enabled model of that name. Enabled: {', '.join(names)}.")


def _out_dir(out: str | None, default: Path) -> Path:
    found = Path(out) if out is not None else default
    if found.exists() and not found.is_dir():
        raise CommandError(f"--out {found} is not a directory.")
    return found


def _request_lines(source: IO[bytes], *, model: str | None) -> Iterator[bytes]:
    """The file as the batch receives it: one line out for each line in, so that the line
    numbers validation reports are the file's own."""
    for number, raw in enumerate(source, start=1):
        line = raw.rstrip(b"\r\n")
        try:
            data = json.loads(line) if line.strip() else None
        except (ValueError, RecursionError):
            data = None  # validation reports it, with its number
        if not isinstance(data, dict):
            yield line + b"\n"
            continue
        if not REQUEST_FIELDS & data.keys():
            data = {"custom_id": f"line-{number}", "method": "POST", "url": ENDPOINT, "body": data}
        elif model is None:
            yield line + b"\n"
            continue
        if model is not None and isinstance(data.get("body"), dict):
            data["body"]["model"] = model
        yield json.dumps(data, ensure_ascii=False).encode() + b"\n"


def batch_summary(batch: Batch) -> str:
    if batch.status == BatchStatus.FAILED:
        return f"Batch {batch.id} failed: its input was refused, nothing ran."
    counts = f"{batch.completed} succeeded, {batch.failed} failed of {batch.total}"
    estimate = f"estimated at most {_usd(batch.estimated_cost_usd)}"
    return f"Batch {batch.id} {batch.status}: {counts}; cost {_usd(batch.cost_usd)} ({estimate})."


def _usd(value: Decimal | str | None) -> str:
    return "unknown" if value is None else f"${Decimal(value):.6f}"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m" if whole >= 3600 else f"{whole // 60}m{whole % 60:02d}s"


def progress_text(progress: dict[str, Any]) -> str:
    if progress["status"] == BatchStatus.VALIDATING:
        return f"{progress['id']}: validating the input"
    done = progress["completed"] + progress["failed"]
    cost = f"{_usd(progress['cost_usd'])} of at most {_usd(progress['estimated_cost_usd'])}"
    eta = "" if progress["eta_s"] is None else f", ETA {_duration(progress['eta_s'])}"
    counts = f"{done}/{progress['total']} done, {progress['failed']} failed"
    return f"{progress['id']} {progress['status']}: {counts}, {cost}{eta}"


class ProgressLine:
    """A batch's progress on stderr: on a terminal one line redrawn in place; otherwise (a
    log, a pipe) a plain line at most each second, when something moved."""

    PLAIN_EVERY_S = 1.0

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out
        self.tty = out.isatty()
        self.width = 0
        self.shown: tuple[Any, ...] | None = None
        self.shown_at = 0.0

    def show(self, progress: dict[str, Any], *, final: bool = False) -> None:
        text = progress_text(progress)
        if self.tty:
            self.out.write("\r" + text.ljust(self.width), ending="", style_func=str)
            self.out.flush()
            self.width = len(text)
            return
        moved = (progress["status"], progress["completed"], progress["failed"], progress["cost_usd"])
        now = time.monotonic()
        if moved != self.shown and (final or now - self.shown_at >= self.PLAIN_EVERY_S):
            self.out.write(text, style_func=str)
            self.shown, self.shown_at = moved, now

    def close(self) -> None:
        if self.tty and self.width:
            self.out.write("", style_func=str)
            self.width = 0
