"""What a cascade saves and keeps, on labelled data, against always asking the strong model
and always asking the cheap one, measured in the same run by `manage.py evaluate`.

Run it with `python -m benchmarks.cascade_quality` (reads ../shared/data; --data DIR
elsewhere; --limit N for a quicker pass). On a temporary SQLite database (migrated and
seeded), three cascades, each on SST-2 (binary) and TweetEval sentiment (three labels):

  local      the seeded `sentiment` route: the local SmolLM2-135M with a label-set and a
             confidence check, then a simulated stand-in for the strong model that is told
             the correct label and answers it with --stand-in-accuracy (0.95), at
             sim-large's cost and latency (every table line names it a stand-in)
  openai     gpt-4o-mini (label set and confidence) then gpt-4.1, when OPENAI_API_KEY is set
  anthropic  claude-haiku-4-5 (label set; Anthropic reports no token probabilities) then
             claude-sonnet-4-5, when ANTHROPIC_API_KEY is set

Each runs with `--fit`: the first step's threshold is set to the cheapest that keeps 95% of
the strongest model's accuracy on the data, and the cascade is measured again at it.
A cascade whose provider key is not set is skipped, saying so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.harness.command import options
from benchmarks.harness.gateway import ROOT, in_process

DATASETS = {
    "sst2_dev.tsv": ["--labels", "0=negative,1=positive"],
    "sentiment3.tsv": [],
}
CLOUD = {
    "openai": ("OPENAI_API_KEY", "gpt-4o-mini", "gpt-4.1", "mean"),
    "anthropic": ("ANTHROPIC_API_KEY", "claude-haiku-4-5", "claude-sonnet-4-5", ""),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = options("cascade_quality", __doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="where the TSV files are")
    parser.add_argument("--limit", type=int, help="only the first N rows of each dataset")
    parser.add_argument("--stand-in-accuracy", type=float, default=0.95)
    parser.add_argument("--only", choices=("local", *CLOUD), action="append", help="run only these cascades")
    args = parser.parse_args(argv)
    missing = [name for name in DATASETS if not (args.data / name).is_file()]
    if missing:
        parser.error(f"{', '.join(missing)} not found in {args.data} (use --data DIR)")
    return args


def cloud_route(name: str, cheap: str, strong: str, confidence: str) -> None:
    from llmops.models import ModelEndpoint
    from routing.models import Cascade, CascadeStep, Route

    ModelEndpoint.objects.filter(name__in=(cheap, strong)).update(enabled=True)
    cascade = Cascade.objects.create(name=f"sentiment-{name}")
    CascadeStep.objects.create(
        cascade=cascade,
        position=0,
        model=cheap,
        labels="positive, negative, neutral",
        confidence=confidence,
        threshold=0.5,
        max_tokens=4,
    )
    CascadeStep.objects.create(cascade=cascade, position=1, model=strong)
    Route.objects.create(name=f"sentiment-{name}", strategy="cascade", cascade=cascade)


def evaluate(route: str, dataset: Path, extra: list[str], args: argparse.Namespace) -> None:
    from django.core.management import call_command

    options = ["--dataset", str(dataset), "--route", route, "--fit", *extra]
    if args.limit:
        options += ["--limit", str(args.limit)]
    print(f"\n== {route} on {dataset.name}", flush=True)
    call_command("evaluate", *options)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = args.only or ["local", *CLOUD]
    with in_process("llmops-cascade-bench-"):
        for name in wanted:
            if name == "local":
                route, extra = "sentiment", ["--stand-in", f"sim-large={args.stand_in_accuracy}"]
            else:
                env, cheap, strong, confidence = CLOUD[name]
                if not os.environ.get(env):
                    print(f"\n== {name}: skipped, {env} is not set (the cascade {cheap} -> {strong} needs it)")
                    continue
                cloud_route(name, cheap, strong, confidence)
                route, extra = f"sentiment-{name}", []
            for dataset, labels in DATASETS.items():
                evaluate(route, args.data / dataset, [*labels, *extra], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
