"""The result pictures: each is a figure with what it claims to draw, saved as a PNG."""

from __future__ import annotations

import math

import pytest

from recbert.evaluation.plots import (fusion_weights_chart, recall_qps_curve, results_chart, save_figure,
                                      training_curves)

PNG = b"\x89PNG\r\n\x1a\n"


def _history(name, n, val=True):
    rows = []
    for e in range(n):
        r = {f"{name}/loss": 5.0 - e, f"{name}/lr": 1e-3}
        if val and e % 2 == 1:
            r.update({"val/unseen/ndcg@10": 0.1 * e, "val/unseen/hr@10": 0.2 * e, "val/all/ndcg@10": 0.05 * e})
        rows.append(r)
    return rows


def test_training_curves_draw_each_stage_and_the_selection_protocol(tmp_path):
    fig = training_curves([("pretrain", _history("pretrain", 3)), ("train", _history("train", 4))],
                          "val/unseen/ndcg@10")
    left, right = fig.axes
    assert [line.get_label() for line in left.get_lines() if not line.get_label().startswith("_")] == \
        ["pretrain", "train"]
    xs = [list(line.get_xdata()) for line in left.get_lines() if line.get_label() == "train"][0]
    assert xs == [4, 5, 6, 7]  # epochs counted across the stages
    labels = [line.get_label() for line in right.get_lines()]
    assert "train val/unseen/ndcg@10" in labels and not any("val/all" in lab for lab in labels)
    bold = [line for line in right.get_lines() if line.get_label().endswith("val/unseen/ndcg@10")]
    assert all(line.get_linewidth() == 2.5 for line in bold)
    path = save_figure(fig, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == PNG


def test_training_curves_without_validation_say_so():
    fig = training_curves([("refit_train", _history("refit_train", 3, val=False))])
    assert "no validation" in [t.get_text() for t in fig.axes[1].texts]


def test_fusion_bars_and_results_error_bars(tmp_path):
    fig = fusion_weights_chart([0.1, 0.3, 0.6])
    assert [round(p.get_height(), 3) for p in fig.axes[0].patches] == [0.1, 0.3, 0.6]
    runs = {"base": [{"auc": 0.70, "f1": 0.5}, {"auc": 0.72, "f1": 0.52}], "fusion": [{"auc": 0.75, "f1": math.nan}]}
    fig = results_chart("ablation", runs, ["auc", "f1", "absent"], ["base", "fusion"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["auc", "f1"]  # a metric no run has is left out
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.51, 0.71, 0.75]  # fusion has no finite f1: no bar
    assert save_figure(fig, tmp_path / "ablation.png").read_bytes()[:8] == PNG


def test_recall_qps_curve_one_line_per_family_with_guides(tmp_path):
    points = [{"family": "hnsw", "recall": r, "qps": q, "label": f"ef={e}"}
              for r, q, e in ((0.9, 9000, 16), (0.96, 5000, 64))] + [{"family": "ivf", "recall": 0.99, "qps": 2000}]
    fig = recall_qps_curve(points, target_recall=0.95, exact_qps=400)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["hnsw"].get_xdata()) == [9000, 5000] and ax.get_xscale() == "log"
    assert "recall 0.95" in lines and "exact" in lines
    assert save_figure(fig, tmp_path / "rq.png").read_bytes()[:8] == PNG


def test_save_figure_failure_leaves_nothing(tmp_path, monkeypatch):
    from recbert.errors import OutputError

    fig = fusion_weights_chart([1.0])
    monkeypatch.setattr(type(fig), "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OutputError, match="disk full"):
        save_figure(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
