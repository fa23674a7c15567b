from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.evaluation import (
    EvaluationError,
    dataset_read,
    evaluation_plan,
    evaluation_run,
    labels_map_parsed,
    rows_chosen,
    stand_ins_parsed,
)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = (
        "Run a labelled TSV dataset through each model of a route and through the route itself; print and "
        "store accuracy, cost, cost per 1,000 and p50/p95 latency, and optionally fit the cascade's threshold."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", required=True, help="A TSV file with a header line.")
        parser.add_argument("--route", required=True, help="The route to evaluate (its name, without route:).")
        parser.add_argument(
            "--model", action="append", default=[], help="Run this model (repeatable); default: the route's models."
        )
        parser.add_argument("--text-column", help="Default: the first column named text or sentence.")
        parser.add_argument("--label-column", default="label")
        parser.add_argument("--labels", help="Map raw labels to answers, e.g. 0=negative,1=positive.")
        parser.add_argument("--limit", type=positive_int, help="Only the first N rows.")
        parser.add_argument("--sample", type=positive_int, help="N rows drawn at random (see --seed).")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--prompt", help="A prompt template with a {{text}} variable; default: the route's name.")
        parser.add_argument("--concurrency", type=positive_int, default=8, help="Requests in flight at once.")
        parser.add_argument("--max-tokens", type=positive_int, default=16)
        parser.add_argument(
            "--stand-in",
            action="append",
            default=[],
            metavar="MODEL=ACCURACY",
            help="A simulated model told the correct label, answering it with this accuracy (repeatable).",
        )
        parser.add_argument("--fit", action="store_true", help="Fit the threshold of the cascade's first step.")
        parser.add_argument("--target-share", type=share, default=0.95, help="Of the strongest model's accuracy.")
        parser.add_argument("--no-store", action="store_true", help="Print the table only.")

    def handle(self, *args, **options) -> None:
        if options["limit"] and options["sample"]:
            raise CommandError("Use --limit or --sample, not both.")
        try:
            labels = labels_map_parsed(options["labels"]) if options["labels"] is not None else None
            stand_ins = stand_ins_parsed(options["stand_in"])
            plan = evaluation_plan(
                route_name=options["route"],
                models=options["model"],
                stand_ins=stand_ins,
                prompt=options["prompt"],
                fit=options["fit"],
            )
            rows = dataset_read(
                path=Path(options["dataset"]),
                text_column=options["text_column"],
                label_column=options["label_column"],
                labels=labels,
            )
            rows = rows_chosen(rows=rows, limit=options["limit"], sample=options["sample"], seed=options["seed"])
            report = evaluation_run(
                plan=plan,
                rows=rows,
                dataset=options["dataset"],
                write=self._progress,
                tty=self.stderr.isatty(),
                concurrency=options["concurrency"],
                max_tokens=options["max_tokens"],
                fit=options["fit"],
                target_share=options["target_share"],
                store=not options["no_store"],
            )
        except EvaluationError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("\n".join(report.lines))

    def _progress(self, text: str) -> None:
        self.stderr.write(text, ending="")
        self.stderr.flush()
