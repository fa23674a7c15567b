"""Provider-native batches: a batch created with `execution: "provider"` is not run item by
item through the pipeline but handed to each model's own batch API (OpenAI's Files and
Batches, Anthropic's Message Batches), at the provider's batch discount.

    check     every item names an OpenAI or Anthropic catalog model directly (no route, no
              local or simulated model), else the batch fails naming the lines
    submit    one provider batch per model, its requests built as the provider module builds
              a call and sent with that model's key to that model's host; each id recorded at
              once in Batch.provider_batches, so a resumed runner polls rather than resubmits
    poll      every LLMOPS_BATCH_PROVIDER_POLL_S; cancelling (or the completion window
              passing) cancels the provider batches, whose finished answers are kept
    collect   each result recorded once on its item (store.outcomes_record) at the discounted
              price, and one metric per item with endpoint "batch_native"
    finalize  the runner's own output and error files

The provider adapters (OpenAI's and Anthropic's batch APIs) are in providers.py; the
database side and the run itself (native_run, NativeRun) in run.py."""

from llmops.batches.native.run import native_run, provider_executed

__all__ = ["native_run", "provider_executed"]
