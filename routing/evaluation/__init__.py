"""`manage.py evaluate`: a labelled dataset through each option of a route (dataset.py reads
and checks it, run.py asks the pipeline and measures, fit.py fits a cascade's threshold)."""

from routing.evaluation.dataset import (
    EvaluationError,
    Row,
    dataset_read,
    labels_map_parsed,
    rows_chosen,
    stand_ins_parsed,
)
from routing.evaluation.fit import Computed, FitRow, cascade_computed, threshold_candidates, threshold_fit
from routing.evaluation.run import Report, evaluation_plan, evaluation_run, table_lines

__all__ = [
    "Computed",
    "EvaluationError",
    "FitRow",
    "Report",
    "Row",
    "cascade_computed",
    "dataset_read",
    "evaluation_plan",
    "evaluation_run",
    "labels_map_parsed",
    "rows_chosen",
    "stand_ins_parsed",
    "table_lines",
    "threshold_candidates",
    "threshold_fit",
]
