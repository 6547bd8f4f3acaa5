"""Tests for recbert.evaluation.report: aggregation, tables and the recall/QPS Pareto front."""

from __future__ import annotations

import math

from recbert.evaluation.report import fmt, mean_std, pareto_front, results_table


def test_mean_std_skips_undefined_values():
    stats = mean_std([{"auc": 0.6, "f1": math.nan}, {"auc": 0.8, "f1": math.nan}])
    assert stats["auc"][0] == 0.7 and abs(stats["auc"][1] - 0.1) < 1e-12
    assert math.isnan(stats["f1"][0]) and fmt(stats["f1"]) == "n/a"
    table = results_table("variant", {"a": [{"auc": 0.6}], "b": [{"auc": 0.8}]}, ["auc"])
    assert "| a |" in table and "0.8000 ± 0.0000" in table


def test_pareto_front_keeps_only_undominated_points():
    points = [
        {"recall": 0.99, "qps": 100, "name": "slow-exactish"},
        {"recall": 0.95, "qps": 1000, "name": "good"},
        {"recall": 0.94, "qps": 900, "name": "dominated by good"},
        {"recall": 0.95, "qps": 1000, "name": "duplicate of good"},
        {"recall": 0.60, "qps": 5000, "name": "fast"},
        {"recall": 0.50, "qps": 5000, "name": "dominated by fast"},
    ]
    front = pareto_front(points)
    assert [p["name"] for p in front] == ["slow-exactish", "good", "fast"]
    assert pareto_front([]) == []
