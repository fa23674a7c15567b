"""The one inference pipeline. REST, streaming, WebSockets and batch items all come here
(see run.py for the order of the steps)."""

from llmops.pipeline.attempts import filled_usage
from llmops.pipeline.run import Inference, infer, request_preview, request_rejected, route_preview
from llmops.pipeline.types import InferenceRequest, InferenceResult, new_request_id, upstream_calls

__all__ = [
    "Inference",
    "InferenceRequest",
    "InferenceResult",
    "filled_usage",
    "infer",
    "new_request_id",
    "request_preview",
    "request_rejected",
    "route_preview",
    "upstream_calls",
]
