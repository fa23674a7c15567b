"""Batches: OpenAI's Files and Batches API, executed by the gateway itself.

models.py      files (stored in parts), batches, items (a row each, with its lease)
files.py       uploads checked against the limits; reading files back
services.py    create, cancel, read, list (per key), OpenAI's shapes, dispatch to a runner
validation.py  every line checked before anything runs
runner.py      the engine: items through the pipeline, many at once, under leases
store.py       the runner's database work on a thread of its own (group commit)
output.py      the output and error files, written once at the end
executor.py    the embedded default's runner thread (no broker); llmops/tasks.py: Celery's
progress.py    progress over the channel layer, for the batches page
api.py         the views of /v1/files and /v1/batches
"""
