"""Files: uploads checked against the size and line limits, stored in parts in the
database, read back line by line or part by part. Synchronous ORM code: the API calls it
off the event loop."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import IO

from django.conf import settings
from django.db import transaction

from llmops.batches.models import BatchFile, FilePart, FilePurpose
from llmops.errors import InvalidRequest, NotFound

PART_BYTES = 4 * 1024 * 1024
READ_BYTES = 1024 * 1024


def _too_large() -> InvalidRequest:
    limit = settings.LLMOPS_BATCH_MAX_FILE_BYTES
    return InvalidRequest(
        f"The file is larger than {limit} bytes, the most a batch file may hold (LLMOPS_BATCH_MAX_FILE_BYTES).",
        param="file",
        code="file_too_large",
    )


def file_create(*, api_key_id: int, upload: IO[bytes], filename: str, purpose: str) -> BatchFile:
    """Store an uploaded batch file, refusing it whole (nothing stored) when it is too large
    or has too many lines."""
    if purpose != FilePurpose.BATCH:
        raise InvalidRequest(
            f"purpose must be 'batch' (this gateway keeps batch files only), not {purpose!r}.",
            param="purpose",
            code="invalid_purpose",
        )
    with transaction.atomic():
        stored = BatchFile.objects.create(api_key_id=api_key_id, purpose=purpose, filename=filename[:255])
        size, lines = file_parts_write(stored, _chunks(upload), limit=True)
        if not size:
            raise InvalidRequest("The file is empty.", param="file", code="empty_file")
        stored.bytes, stored.line_count = size, lines
        stored.save(update_fields=["bytes", "line_count"])
    return stored


def _chunks(upload: IO[bytes]) -> Iterator[bytes]:
    while chunk := upload.read(READ_BYTES):
        yield chunk


def file_parts_write(stored: BatchFile, chunks: Iterable[bytes], *, limit: bool = False) -> tuple[int, int]:
    """Write `chunks` as the file's parts; returns its size and its number of lines. With
    `limit`, raises InvalidRequest past the upload limits (the caller's transaction then
    rolls the parts back)."""
    size = lines = index = 0
    pending: list[bytes] = []
    pending_size = 0
    last = b"\n"
    for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        lines += chunk.count(b"\n")
        last = chunk[-1:]
        if limit and size > settings.LLMOPS_BATCH_MAX_FILE_BYTES:
            raise _too_large()
        if limit and lines > settings.LLMOPS_BATCH_MAX_LINES:
            raise _too_many_lines()
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= PART_BYTES:
            FilePart.objects.create(file=stored, index=index, data=b"".join(pending))
            index += 1
            pending, pending_size = [], 0
    if pending:
        FilePart.objects.create(file=stored, index=index, data=b"".join(pending))
    if size and last != b"\n":
        lines += 1  # the last line has no newline
        if limit and lines > settings.LLMOPS_BATCH_MAX_LINES:
            raise _too_many_lines()
    return size, lines


def _too_many_lines() -> InvalidRequest:
    return InvalidRequest(
        f"The file has more than {settings.LLMOPS_BATCH_MAX_LINES} lines, the most a batch may hold "
        "(LLMOPS_BATCH_MAX_LINES).",
        param="file",
        code="too_many_lines",
    )


def file_parts(file_id: str) -> Iterator[bytes]:
    """The file's bytes, one stored part at a time (each read when it is needed)."""
    ids = list(FilePart.objects.filter(file_id=file_id).order_by("index").values_list("id", flat=True))
    for part_id in ids:
        yield bytes(FilePart.objects.values_list("data", flat=True).get(id=part_id))


def file_lines(file_id: str) -> Iterator[tuple[int, bytes]]:
    """Each line of the file with its number (from 1), without its line ending."""
    number = 0
    rest = b""
    for part in file_parts(file_id):
        block = rest + part
        *whole, rest = block.split(b"\n")
        for line in whole:
            number += 1
            yield number, line.rstrip(b"\r")
    if rest:
        yield number + 1, rest.rstrip(b"\r")


FILE_ID = re.compile(r"\Afile-[0-9a-f]{24}\Z")


def file_get(*, api_key_id: int, file_id: str) -> BatchFile:
    found = BatchFile.objects.filter(id=file_id, api_key_id=api_key_id).first() if FILE_ID.match(file_id) else None
    if found is None:
        raise NotFound("No such file.", param="file_id", code="file_not_found")
    return found


def file_delete(*, api_key_id: int, file_id: str) -> None:
    file_get(api_key_id=api_key_id, file_id=file_id).delete()
