"""`manage.py evaluate`: a labelled dataset through each model of a route and the route
itself, the table it prints and stores, and the threshold it fits.

The route under test is a cascade: a cheap OpenAI-compatible model behind a fake server
that answers each text as data/reviews.tsv scripts it (its cheap_answer and cheap_prob
columns: the answer and every token's probability), then a simulated strong model as a
stand-in told the label. So every figure below follows from the file."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from llmops import catalog
from llmops.catalog import EndpointConfig
from llmops.models import ApiKey, ModelEndpoint
from llmops.providers.base import ProviderCall
from llmops.providers.simulated import SimulatedProvider
from routing.config import routing_snapshot
from routing.evaluation import FitRow, threshold_candidates, threshold_fit
from routing.models import Cascade, CascadeStep, Evaluation, Route
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.upstream import running, text_pieces

pytestmark = pytest.mark.django_db(transaction=True)

DATA = Path(__file__).parent / "data"
REVIEWS = DATA / "reviews.tsv"
CHEAP, STRONG = "ev-cheap", "ev-strong"
CHEAP_PRICES = {"input_price_per_mtok": Decimal("0.10"), "output_price_per_mtok": Decimal("0.40")}
STRONG_PRICES = {"input_price_per_mtok": Decimal("3.00"), "output_price_per_mtok": Decimal("15.00")}


def reviews() -> list[dict[str, str]]:
    lines = REVIEWS.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


class ScriptedOpenAI(FakeOpenAI):
    """Answers each text (the last user message) as the dataset's script says."""

    def __init__(self) -> None:
        super().__init__()
        self.script = {row["text"]: (row["cheap_answer"], float(row["cheap_prob"])) for row in reviews()}
        self._one_at_a_time = threading.Lock()  # the fake's answer is one shared setting

    def route(self, handler, request) -> None:
        answer, prob = self.script[request.body["messages"][-1]["content"]]
        with self._one_at_a_time:
            logprobs = [math.log(prob)] * len(text_pieces(answer))
            self.reply(text=answer, token_logprobs=logprobs, prompt_tokens=20, completion_tokens=2)
            super().route(handler, request)


@pytest.fixture
def cheap_upstream() -> Iterator[ScriptedOpenAI]:
    yield from running(ScriptedOpenAI())


@pytest.fixture
def reviews_route(upstream_under_test, cheap_upstream) -> Route:
    """route:reviews, a cascade: ev-cheap (label set and mean confidence, threshold 0.5), then ev-strong."""
    ModelEndpoint.objects.create(
        name=CHEAP, provider="openai", upstream_model=CHEAP, base_url=cheap_upstream.base_url, **CHEAP_PRICES
    )
    ModelEndpoint.objects.create(name=STRONG, provider="simulated", simulation={}, **STRONG_PRICES)
    ModelEndpoint.objects.create(name="ev-off", provider="simulated", enabled=False)
    cascade = Cascade.objects.create(name="reviews")
    for position, step in enumerate(
        [{"model": CHEAP, "labels": "positive, negative", "confidence": "mean", "threshold": 0.5}, {"model": STRONG}]
    ):
        row = CascadeStep(cascade=cascade, position=position, **step)
        row.full_clean()
        row.save()
    route = Route(name="reviews", strategy="cascade", cascade=cascade)
    route.full_clean()
    route.save()
    catalog.reset()
    return route


def evaluate(*args: str, dataset: Path = REVIEWS, route: str = "reviews") -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("evaluate", "--dataset", str(dataset), "--route", route, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def option(evaluation: Evaluation, name: str, kind: str | None = None) -> dict:
    return next(r for r in evaluation.results if r["option"] == name and (kind is None or r["kind"] == kind))


def step_zero() -> CascadeStep:
    return CascadeStep.objects.get(cascade__name="reviews", position=0)


def test_it_measures_each_model_and_the_cascade_and_stores_the_table(reviews_route):
    out, err = evaluate("--stand-in", f"{STRONG}=1")
    evaluation = Evaluation.objects.get()
    assert evaluation.route == reviews_route and evaluation.rows == 30 and evaluation.dataset == str(REVIEWS)
    # The file scripts 24 right answers of 30 for the cheap model; the stand-in told the label at 1 is always right.
    cheap, strong = option(evaluation, CHEAP), option(evaluation, STRONG)
    assert cheap["accuracy"] == pytest.approx(24 / 30) and cheap["kind"] == "model" and not cheap["stand_in"]
    assert strong["accuracy"] == 1.0 and strong["stand_in"] and strong["stand_in_accuracy"] == 1.0
    assert cheap["cost_usd"] == pytest.approx(30 * (20 * 0.10 + 2 * 0.40) / 1e6)
    assert cheap["cost_per_1k"] == pytest.approx(cheap["cost_usd"] * 1000 / 30)
    assert cheap["n"] == 30 and cheap["p50_ms"] <= cheap["p95_ms"]
    # At threshold 0.5 the cascade keeps 20 sure right answers and 2 sure wrong ones, and
    # escalates the 4 unsure right, 2 unsure wrong and 2 answers outside the label set.
    cascade = option(evaluation, "cascade:reviews")
    assert cascade["kind"] == "cascade" and cascade["stand_in"]
    assert cascade["accuracy"] == pytest.approx(28 / 30)
    assert cascade["escalation_rate"] == pytest.approx(8 / 30)
    assert evaluation.strongest == STRONG
    assert evaluation.accuracy_kept_share == pytest.approx(28 / 30)
    assert evaluation.cost_saved_share == pytest.approx(1 - cascade["cost_usd"] / strong["cost_usd"])
    assert 0.5 < evaluation.cost_saved_share < 1
    assert f"Stored evaluation {evaluation.pk}." in out
    assert f"{CHEAP}: 30/30 (100%)" in err and "route:reviews: 30/30 (100%)" in err


def test_every_line_a_stand_in_answered_says_so(reviews_route):
    out, _ = evaluate("--stand-in", f"{STRONG}=0.9", "--fit")
    table = out.split("\n\n")[0].splitlines()[2:]
    answered_by_the_stand_in = [line for line in table if not line.startswith(f"{CHEAP} ")]
    assert len(answered_by_the_stand_in) == 6  # the model, the cascade before and after fitting, 3 computed
    for line in answered_by_the_stand_in:
        assert "stand-in, told the label, accuracy 0.9" in line, line
    assert "stand-in" not in next(line for line in table if line.startswith(f"{CHEAP} "))


def test_a_stand_in_is_right_as_often_as_the_simulated_provider_answers_it(reviews_route):
    evaluate("--stand-in", f"{STRONG}=0.7", "--model", STRONG)
    endpoint = EndpointConfig.from_model(ModelEndpoint.objects.get(name=STRONG))
    provider = SimulatedProvider()

    async def right(row: dict[str, str]) -> bool:
        call = ProviderCall(
            messages=[{"role": "user", "content": row["text"]}],
            params={},
            simulate={"answer": row["label"], "answer_accuracy": 0.7, "answer_choices": ["negative", "positive"]},
        )
        return (await provider.complete(endpoint, call)).text == row["label"]

    expected = sum(asyncio.run(right(row)) for row in reviews()) / 30
    first = Evaluation.objects.get()
    assert option(first, STRONG)["accuracy"] == pytest.approx(expected)
    assert 0.5 <= expected <= 0.9  # about the accuracy it was told
    evaluate("--stand-in", f"{STRONG}=0.7", "--model", STRONG)
    second = Evaluation.objects.exclude(pk=first.pk).get()
    assert option(second, STRONG)["accuracy"] == option(first, STRONG)["accuracy"]


def test_fitting_stores_the_cheapest_threshold_that_keeps_the_target_share(reviews_route):
    out, _ = evaluate("--stand-in", f"{STRONG}=1", "--fit")
    evaluation = Evaluation.objects.get()
    # Only a threshold above the sure-but-wrong 0.75 and at most the surest-right 0.80 keeps 95% of 1.0.
    assert evaluation.fitted_threshold == pytest.approx(0.775)
    assert step_zero().threshold == pytest.approx(0.775)
    reviews_route.refresh_from_db()
    assert reviews_route.fitted_threshold == pytest.approx(0.775)
    # The cascade row is measured again at the fitted threshold, and meets the target.
    cascade = option(evaluation, "cascade:reviews", "cascade")
    assert cascade["threshold"] == pytest.approx(0.775)
    assert cascade["accuracy"] == 1.0 >= 0.95 * option(evaluation, STRONG)["accuracy"]
    assert cascade["escalation_rate"] == pytest.approx(10 / 30)
    assert evaluation.accuracy_kept_share == 1.0
    before = next(r for r in evaluation.results if r["kind"] == "before_fit")
    assert before["threshold"] == 0.5 and before["accuracy"] == pytest.approx(28 / 30)
    assert "Fitted the threshold of cascade:reviews step 0 (ev-cheap): 0.775 (was 0.5)" in out


def test_the_computed_rows_show_which_check_made_the_difference(reviews_route):
    out, _ = evaluate("--stand-in", f"{STRONG}=1", "--fit")
    evaluation = Evaluation.objects.get()
    computed = {r["check"]: r for r in evaluation.results if r["kind"] == "computed"}
    assert set(computed) == {"label set only", "confidence only >= 0.775", "label set + confidence >= 0.775"}
    # The label set alone catches the 2 answers outside it; confidence alone keeps them.
    assert computed["label set only"]["accuracy"] == pytest.approx(26 / 30)
    assert computed["label set only"]["escalation_rate"] == pytest.approx(2 / 30)
    assert computed["confidence only >= 0.775"]["accuracy"] == pytest.approx(28 / 30)
    both = computed["label set + confidence >= 0.775"]
    assert both["accuracy"] == 1.0 and both["p50_ms"] is None
    # Computed offline from the measured rows, it is what the measured cascade paid.
    assert both["cost_usd"] == pytest.approx(option(evaluation, "cascade:reviews", "cascade")["cost_usd"])
    assert "[computed offline: label set only]" in out
    assert "from the per-row answers of the runs above, not run as such" in out


def test_a_lower_target_share_fits_a_cheaper_threshold(reviews_route):
    evaluate("--stand-in", f"{STRONG}=1", "--fit", "--target-share", "0.9")
    # Keeping the unsure-but-right 0.45 answers still reaches 28 of 30 and escalates only 4.
    assert step_zero().threshold == pytest.approx(0.4)
    assert option(Evaluation.objects.get(), "cascade:reviews", "cascade")["escalation_rate"] == pytest.approx(4 / 30)


def test_when_no_threshold_reaches_the_target_it_fits_the_most_accurate_and_says_so(reviews_route):
    # A model outside the route is the strongest, and the cascade's strong step is always wrong.
    ModelEndpoint.objects.create(name="ev-oracle", provider="simulated", simulation={}, **STRONG_PRICES)
    out, _ = evaluate(
        "--model", CHEAP, "--model", "ev-oracle", "--stand-in", "ev-oracle=1", "--stand-in", f"{STRONG}=0", "--fit"
    )
    assert "No threshold reaches the target on this data: the fitted one is the most accurate." in out
    # The most accurate keeps every cheap answer: 24 of 30.
    assert step_zero().threshold == 0.0
    evaluation = Evaluation.objects.get()
    assert evaluation.strongest == "ev-oracle"
    assert option(evaluation, "cascade:reviews", "cascade")["accuracy"] == pytest.approx(24 / 30)


def test_the_fit_picks_the_lowest_cost_threshold_among_those_that_qualify():
    rows = [
        FitRow(
            score=s,
            checks={},
            cheap_correct=c,
            cheap_cost=Decimal("0.001"),
            strong_correct=True,
            strong_cost=Decimal("0.01"),
        )
        for s, c in [(0.9, True), (0.8, True), (0.6, False), (0.4, True), (0.0, False)]
    ]
    assert threshold_candidates([0.9, 0.8, 0.6, 0.4, 0.0]) == [0.0, 0.2, 0.5, 0.7, 0.85, 0.9001]
    chosen, met = threshold_fit(rows=rows, target_accuracy=1.0)
    assert met and chosen.threshold == 0.7 and chosen.accuracy == 1.0
    assert chosen.cost == Decimal("0.005") + 3 * Decimal("0.01")


def test_without_storing_it_prints_the_table_and_puts_the_threshold_back(reviews_route):
    out, _ = evaluate("--stand-in", f"{STRONG}=1", "--fit", "--no-store")
    assert "cascade:reviews at 0.775" in out and "Not stored: the threshold is back at 0.5." in out
    assert not Evaluation.objects.exists()
    assert step_zero().threshold == 0.5
    reviews_route.refresh_from_db()
    assert reviews_route.fitted_threshold is None


def test_raw_labels_are_mapped_to_answer_labels(reviews_route, tmp_path):
    numeric = tmp_path / "numeric.tsv"
    numeric.write_text(REVIEWS.read_text().replace("\tpositive\t", "\t1\t").replace("\tnegative\t", "\t0\t"))
    evaluate("--stand-in", f"{STRONG}=1", "--labels", "0=negative,1=positive", dataset=numeric)
    assert option(Evaluation.objects.get(), CHEAP)["accuracy"] == pytest.approx(24 / 30)


def test_limit_and_sample_choose_the_rows(reviews_route):
    evaluate("--stand-in", f"{STRONG}=1", "--limit", "5", "--no-store")
    evaluate("--stand-in", f"{STRONG}=1", "--sample", "7", "--seed", "3")
    assert Evaluation.objects.get().rows == 7


def test_the_evaluate_key_is_made_once_and_reused(reviews_route):
    evaluate("--stand-in", f"{STRONG}=1", "--limit", "3")
    evaluate("--stand-in", f"{STRONG}=1", "--limit", "3")
    assert ApiKey.objects.filter(name="evaluate").count() == 1


def test_bad_lines_are_refused_naming_each_line_and_nothing_runs(reviews_route, cheap_upstream, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nfine\t1\ntoo\tmany\tfields\n\t0\nno label\t\nodd label\t7\nfine again\t0\n")
    with pytest.raises(CommandError) as refused:
        evaluate("--labels", "0=negative,1=positive", dataset=bad)
    message = str(refused.value)
    assert "has 4 bad lines; nothing was run" in message
    assert "line 3: has 3 fields, the header 2" in message
    assert "line 4: the text is empty" in message
    assert "line 5: the label is empty" in message
    assert "line 6: the label '7' is not in --labels" in message
    assert "line 2" not in message and "line 7" not in message
    assert not Evaluation.objects.exists() and cheap_upstream.requests == []


def test_only_the_first_twenty_bad_lines_are_listed(reviews_route, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\n" + "one field\n" * 25)
    with pytest.raises(CommandError, match=r"has 25 bad lines") as refused:
        evaluate(dataset=bad)
    assert "line 21:" in str(refused.value) and "line 22:" not in str(refused.value)
    assert "... and 5 more" in str(refused.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--route", "nowhere"], "There is no route named 'nowhere'."),
        (["--model", "no-such-model"], "--model: Not in the catalog: no-such-model."),
        (["--model", "ev-off"], "--model: Disabled in the catalog: ev-off."),
        (["--labels", "0:negative"], "--labels '0:negative': write RAW=LABEL pairs"),
        (["--stand-in", "ev-strong"], "--stand-in 'ev-strong': write MODEL=ACCURACY"),
        (["--stand-in", "ev-strong=1.5"], "with an accuracy from 0 to 1"),
        (["--stand-in", "ev-cheap=0.9"], "only a simulated model can stand in; ev-cheap is not one"),
        (["--dataset", "/no/such/file.tsv"], "There is no dataset file /no/such/file.tsv."),
        (["--text-column", "body"], "--text-column 'body' is not a column of reviews.tsv"),
        (["--prompt", "nope"], "--prompt: there is no prompt template 'nope'."),
        (["--limit", "3", "--sample", "3"], "Use --limit or --sample, not both."),
        (["--route", "support", "--fit"], "--fit fits the cascade of a route that uses one"),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_it(reviews_route, args, message):
    # A later --dataset or --route wins over the defaults.
    defaults = ["--dataset", str(REVIEWS), "--route", "reviews"]
    with pytest.raises(CommandError) as refused:
        call_command("evaluate", *defaults, *args, stdout=StringIO(), stderr=StringIO())
    assert message in str(refused.value)
    assert not Evaluation.objects.exists()


def test_the_admin_lists_the_evaluation_and_shows_its_table(reviews_route, admin_client):
    evaluate("--stand-in", f"{STRONG}=1", "--fit")
    evaluation = Evaluation.objects.get()
    listing = admin_client.get("/admin/routing/evaluation/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "reviews" in page and str(REVIEWS) in page and STRONG in page
    detail = admin_client.get(f"/admin/routing/evaluation/{evaluation.pk}/change/").content.decode()
    assert "cascade:reviews" in detail and f"{STRONG} (stand-in, told the label" in detail


def test_the_latest_evaluation_is_the_quality_routing_reads(reviews_route):
    evaluate("--stand-in", f"{STRONG}=1")
    catalog.reset()
    evaluated = asyncio.run(routing_snapshot()).evaluated["reviews"]
    assert evaluated[CHEAP] == pytest.approx(24 / 30) and evaluated[STRONG] == 1.0
    assert evaluated["cascade:reviews"] == pytest.approx(28 / 30)


@pytest.mark.local_model
def test_it_evaluates_the_seeded_sentiment_cascade_with_the_local_model(upstream_under_test):
    out, _ = evaluate("--stand-in", "sim-large=1", "--limit", "6", "--fit", route="sentiment")
    evaluation = Evaluation.objects.get()
    local = option(evaluation, "smollm2-135m")
    assert local["n"] == 6 and local["cost_usd"] == 0 and local["p50_ms"] > 0
    cascade = option(evaluation, "cascade:sentiment", "cascade")
    # Escalating every answer reaches the stand-in's accuracy, so some threshold meets the target.
    assert cascade["accuracy"] >= 0.95
    assert 0 <= step_zero_of("sentiment").threshold <= 1
    assert evaluation.fitted_threshold == step_zero_of("sentiment").threshold
    assert "smollm2-135m" in out and "sim-large (stand-in, told the label, accuracy 1)" in out


def step_zero_of(cascade: str) -> CascadeStep:
    return CascadeStep.objects.get(cascade__name=cascade, position=0)
