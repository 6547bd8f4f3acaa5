"""Task-head metrics: values, ties, and non-finite probabilities as an error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recbert.errors import DivergenceError
from recbert.evaluation.classification import classification_metrics, ctr_metrics


def test_classification_metrics():
    y = np.array([0, 1, 1, 0])
    m = classification_metrics(y, np.array([0.1, 0.9, 0.8, 0.3]), 2)
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0 and m["f1_macro"] == 1.0 and m["log_loss"] < 0.3
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics(np.array([0, 1, 0]), p, 3)  # class 2 absent: AUC over present classes
    assert m["accuracy"] == pytest.approx(2 / 3) and m["f1_micro"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(1.0) and math.isfinite(m["log_loss"])
    c = ctr_metrics(np.array([0, 1, 1]), np.array([0.2, 0.6, 0.9]))
    assert c["auc"] == 1.0 and c["accuracy"] == 1.0


def test_tied_probabilities_give_chance_auc_not_a_perfect_one():
    y = np.array([0, 1, 1, 0, 1, 0])
    assert classification_metrics(y, np.full(6, 0.5), 2)["auc"] == 0.5
    assert ctr_metrics(y, np.full(6, 0.3))["auc"] == 0.5
    assert classification_metrics(np.array([0, 1, 2]), np.full((3, 3), 1 / 3), 3)["auc"] == 0.5


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_probabilities_are_an_error(bad):
    with pytest.raises(DivergenceError, match="model probabilities are not finite"):
        classification_metrics(np.array([0, 1]), np.array([0.2, bad]), 2)
    with pytest.raises(DivergenceError, match="not finite"):
        ctr_metrics(np.array([0, 1]), np.array([bad, 0.4]))
