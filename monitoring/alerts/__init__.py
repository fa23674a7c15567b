"""Regression alerts: rules edited in the admin (AlertRule), checks of the rollups against
them every minute (checks), the tests they use (stats), the webhook (webhook), the open
alerts for the dashboard (selectors) and the embedded default's scheduler thread (loop)."""

from monitoring.alerts.checks import CheckResult, Finding, alert_rules_seed, regressions_check
from monitoring.alerts.selectors import alerts_open

__all__ = ["CheckResult", "Finding", "alert_rules_seed", "alerts_open", "regressions_check"]
