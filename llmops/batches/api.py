"""OpenAI's Files and Batches API (`/v1/files`, `/v1/batches`): thin async views over the
services, each scoped to the calling key. The official `openai` SDK's batch flow works
against them unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import SuspiciousOperation
from django.core.files.base import ContentFile
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.http import content_disposition_header
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers

from llmops.api.openapi import ERROR_HEADERS, error_responses
from llmops.api.serializers import MetadataField
from llmops.api.views import GatewayAPIView, read_json_object
from llmops.batches import files, services
from llmops.batches.models import Batch, BatchFile, FilePurpose
from llmops.catalog import ApiKeyInfo
from llmops.errors import InvalidRequest

FILE_ID = OpenApiParameter("file_id", str, OpenApiParameter.PATH)
BATCH_ID = OpenApiParameter("batch_id", str, OpenApiParameter.PATH)
AFTER = OpenApiParameter("after", str, description="The id of the last object of the previous page.")


def limit_param(maximum: int, default: int) -> OpenApiParameter:
    return OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": maximum},
        description=f"How many to return (1 to {maximum}, default {default}).",
    )


FILE_OBJECT = inline_serializer(
    "FileObject",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "bytes": serializers.IntegerField(),
        "created_at": serializers.IntegerField(),
        "filename": serializers.CharField(),
        "purpose": serializers.CharField(),
        "status": serializers.CharField(),
    },
)
BATCH_OBJECT = OpenApiResponse(description="A batch object in OpenAI's shape, with the gateway's `llmops` field.")


async def orm(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ORM code on a pool thread and hand its connection back: the API's handler sends
    no request_finished signal, which would otherwise close it."""

    def call() -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return await sync_to_async(call, thread_sensitive=False)()


def _list_body(rows: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": rows,
        "first_id": rows[0]["id"] if rows else None,
        "last_id": rows[-1]["id"] if rows else None,
        "has_more": has_more,
    }


def _upload_parsed(request: HttpRequest) -> tuple[Any, str]:
    try:
        upload = request.FILES.get("file")
        purpose = request.POST.get("purpose", "")
        if upload is None and "file" in request.POST:
            # A part without a filename (curl -F 'file=<requests.jsonl') arrives as a plain field.
            upload = ContentFile(request.POST["file"].encode(), name="upload.jsonl")
    except (MultiPartParserError, SuspiciousOperation, UnicodeDecodeError, ValueError) as exc:
        # A malformed envelope, or one past Django's limits (fields, files, field sizes).
        raise InvalidRequest(f"The upload is not a valid multipart form: {exc}", code="invalid_upload") from None
    if upload is None:
        raise InvalidRequest("Send the file as the multipart field `file`.", param="file")
    return upload, purpose


def _file_create(request: HttpRequest, api_key_id: int) -> BatchFile:
    content_type = request.META.get("CONTENT_TYPE", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("Upload a file as multipart/form-data (fields `file` and `purpose`).", param="file")
    upload, purpose = _upload_parsed(request)
    try:
        return files.file_create(
            api_key_id=api_key_id, upload=upload, filename=upload.name or "upload.jsonl", purpose=purpose
        )
    finally:
        upload.close()


def _files_list(api_key_id: int, query: Any) -> dict[str, Any]:
    limit = services.list_limit(query.get("limit"), default=10_000, maximum=10_000)
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc.", param="order")
    found = BatchFile.objects.filter(api_key_id=api_key_id)
    purpose = query.get("purpose")
    if purpose is not None:
        if purpose not in FilePurpose.values:
            raise InvalidRequest(f"purpose must be one of {', '.join(FilePurpose.values)}.", param="purpose")
        found = found.filter(purpose=purpose)
    rows, has_more = services.page_after(found, query.get("after"), limit, newest_first=order == "desc")
    return _list_body([services.file_body(row) for row in rows], has_more)


def _batches_list(api_key_id: int, query: Any) -> dict[str, Any]:
    limit = services.list_limit(query.get("limit"), default=20, maximum=100)
    rows, has_more = services.page_after(Batch.objects.filter(api_key_id=api_key_id), query.get("after"), limit)
    return _list_body([services.batch_body(row) for row in rows], has_more)


class FilesView(GatewayAPIView):
    @extend_schema(
        operation_id="files_create",
        summary="Upload a JSONL batch file (multipart: file, purpose=batch)",
        request={
            # `file` is not `format: binary` here: a part without a filename is taken too, as its text.
            "multipart/form-data": inline_serializer(
                "FileUpload",
                {
                    "file": serializers.CharField(min_length=1, help_text="The JSONL file: a file part, or its text."),
                    "purpose": serializers.ChoiceField(["batch"]),
                },
            )
        },
        parameters=ERROR_HEADERS,
        responses={200: FILE_OBJECT, **error_responses(400, 401, 405, 500)},
    )
    async def post(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        stored = await orm(_file_create, request, api_key.id)
        return JsonResponse(services.file_body(stored))

    @extend_schema(
        operation_id="files_list",
        summary="List this key's files, newest first",
        parameters=[
            AFTER,
            limit_param(10_000, 10_000),
            OpenApiParameter("purpose", {"type": "string", "enum": ["batch", "batch_output"]}),
            OpenApiParameter("order", {"type": "string", "enum": ["asc", "desc"]}),
            *ERROR_HEADERS,
        ],
        responses={
            200: OpenApiResponse(description="A list of file objects."),
            **error_responses(400, 401, 404, 405, 500),
        },
    )
    async def get(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        return JsonResponse(await orm(_files_list, api_key.id, request.GET))


class FileDetailView(GatewayAPIView):
    api_methods = ("get", "delete")

    @extend_schema(
        operation_id="files_retrieve",
        summary="Describe one file",
        parameters=[FILE_ID, *ERROR_HEADERS],
        responses={200: FILE_OBJECT, **error_responses(401, 404, 405, 500)},
    )
    async def get(self, request: HttpRequest, api_key: ApiKeyInfo, file_id: str) -> HttpResponse:
        stored = await orm(files.file_get, api_key_id=api_key.id, file_id=file_id)
        return JsonResponse(services.file_body(stored))

    @extend_schema(
        operation_id="files_delete",
        summary="Delete one file",
        parameters=[FILE_ID, *ERROR_HEADERS],
        responses={
            200: OpenApiResponse(description="{id, object: file, deleted: true}"),
            **error_responses(401, 404, 405, 500),
        },
    )
    async def delete(self, request: HttpRequest, api_key: ApiKeyInfo, file_id: str) -> HttpResponse:
        await orm(files.file_delete, api_key_id=api_key.id, file_id=file_id)
        return JsonResponse({"id": file_id, "object": "file", "deleted": True})


class FileContentView(GatewayAPIView):
    @extend_schema(
        operation_id="files_content",
        summary="The file's bytes (a batch's output and error files are JSONL in OpenAI's format)",
        parameters=[FILE_ID, *ERROR_HEADERS],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(description="The file."),
            **error_responses(401, 404, 405, 500),
        },
    )
    async def get(self, request: HttpRequest, api_key: ApiKeyInfo, file_id: str) -> HttpResponse:
        stored = await orm(files.file_get, api_key_id=api_key.id, file_id=file_id)
        parts = files.file_parts(stored.id)

        async def content() -> AsyncIterator[bytes]:
            while (part := await orm(next, parts, None)) is not None:
                yield part

        response = StreamingHttpResponse(content(), content_type="application/octet-stream")
        response["Content-Length"] = str(stored.bytes)
        response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=stored.filename)
        return response


class BatchesView(GatewayAPIView):
    @extend_schema(
        operation_id="batches_create",
        summary="Create a batch from an uploaded file, run by the gateway (or the provider's batch API)",
        description=(
            "OpenAI's batch create. completion_window may be any duration up to 24h (24h, 30m, 90s). "
            "The gateway's own field `execution` (through extra_body): `gateway` (default: every item "
            "through the pipeline at the normal price) or `provider` (OpenAI and Anthropic models: the "
            "provider's batch API, at the catalog's batch discount)."
        ),
        request=inline_serializer(
            "BatchCreateRequest",
            {
                "input_file_id": serializers.CharField(min_length=1, max_length=40),
                "endpoint": serializers.ChoiceField(choices=services.ENDPOINTS),
                "completion_window": serializers.RegexField(services.WINDOW_PATTERN, required=False),
                "metadata": MetadataField(required=False),
                "execution": serializers.ChoiceField(choices=("gateway", "provider"), required=False),
            },
        ),
        parameters=ERROR_HEADERS,
        responses={200: BATCH_OBJECT, **error_responses(400, 401, 404, 413, 405, 500)},
    )
    async def post(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        data = read_json_object(request)
        batch = await orm(
            services.batch_create,
            api_key_id=api_key.id,
            input_file_id=data.get("input_file_id"),
            endpoint=data.get("endpoint"),
            completion_window=data.get("completion_window", "24h"),
            metadata=data.get("metadata"),
            execution=data.get("execution", "gateway"),
        )
        return JsonResponse(services.batch_body(batch))

    @extend_schema(
        operation_id="batches_list",
        summary="List this key's batches, newest first",
        parameters=[AFTER, limit_param(100, 20), *ERROR_HEADERS],
        responses={
            200: OpenApiResponse(description="A page of batch objects."),
            **error_responses(400, 401, 404, 405, 500),
        },
    )
    async def get(self, request: HttpRequest, api_key: ApiKeyInfo) -> HttpResponse:
        return JsonResponse(await orm(_batches_list, api_key.id, request.GET))


class BatchDetailView(GatewayAPIView):
    @extend_schema(
        operation_id="batches_retrieve",
        summary="One batch: its status, timestamps, request counts and files",
        parameters=[BATCH_ID, *ERROR_HEADERS],
        responses={200: BATCH_OBJECT, **error_responses(401, 404, 405, 500)},
    )
    async def get(self, request: HttpRequest, api_key: ApiKeyInfo, batch_id: str) -> HttpResponse:
        batch = await orm(services.batch_get, api_key_id=api_key.id, batch_id=batch_id)
        return JsonResponse(services.batch_body(batch))


class BatchCancelView(GatewayAPIView):
    @extend_schema(
        operation_id="batches_cancel",
        summary="Cancel a batch: the remaining items stop, the finished results are kept",
        request=None,
        parameters=[BATCH_ID, *ERROR_HEADERS],
        responses={200: BATCH_OBJECT, **error_responses(401, 404, 409, 405, 500)},
    )
    async def post(self, request: HttpRequest, api_key: ApiKeyInfo, batch_id: str) -> HttpResponse:
        batch = await orm(services.batch_cancel, api_key_id=api_key.id, batch_id=batch_id)
        return JsonResponse(services.batch_body(batch))
