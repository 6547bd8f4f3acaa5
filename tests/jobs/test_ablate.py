"""The ablation runner: grid definition and a 2-variant x 1-seed run end to end."""

from __future__ import annotations

import pytest

from recbert.jobs.ablate import AblationConfig, AblationGrid, run_ablation, variant_name
from recbert.cli import main
from recbert.errors import ConfigError
from tests.conftest import REPO

ML = REPO / "data" / "ml-100k"
QUICK = [
    f"experiment.events={ML / 'events.parquet'}", f"experiment.users={ML / 'users.parquet'}",
    "experiment.folds=2", "experiment.epochs=1",
    "model.hidden=16", "model.layers=1", "model.intermediate=32", "model.max_len=20",
    "grid.pretrain_epochs=1", "grid.fusion=[\"last\",\"mean\"]", "grid.reuse_block=[\"none\"]",
    "grid.residual_attention=[false]", "grid.pretrained=[true]", "grid.aux=[\"none\"]", "grid.tower=[\"add\"]",
    "grid.seeds=[0]", "pretrain.batch_size=512",
]


def test_default_grid_is_one_switch_at_a_time():
    grid = AblationGrid()
    variants = grid.variants()
    base = variants[0]
    assert base == {"fusion": "last", "reuse_block": "none", "residual_attention": False, "pretrained": True,
                    "aux": "none", "tower": "add"}
    assert len(variants) == 10
    names = [variant_name(v, base) for v in variants]
    assert names[0] == "base" and "pretrained=False" in names and "tower=concat" in names
    assert "tower=plain" in names and "fusion=learned" in names and "aux=head" in names
    assert all(sum(v[k] != base[k] for k in base) == 1 for v in variants[1:])
    assert len(AblationGrid(mode="full").variants()) == 3 * 2 * 2 * 2 * 3 * 3
    assert len(AblationGrid(max_variants=2).variants()) == 2


def test_grid_rejects_bad_values():
    with pytest.raises(ConfigError, match="reuse_block"):
        AblationGrid(reuse_block=["none", "rnn"])
    with pytest.raises(ConfigError, match="fusion"):
        AblationGrid(fusion=["last", "median"])
    with pytest.raises(ConfigError, match="unknown config key"):
        AblationConfig.load(None, ["grid.fusions=[\"last\"]"])
    with pytest.raises(ConfigError, match="grid.aux values"):
        AblationGrid(aux=["none", "cls"])


def test_ablation_end_to_end_two_variants(mlflow_uri):
    from mlflow.tracking import MlflowClient

    res = run_ablation(AblationConfig.load(None, QUICK))
    assert res.names == ["base", "fusion=mean"]
    assert all(len(res.runs[n]) == 2 for n in res.names)  # 2 folds x 1 seed
    lines = res.table.splitlines()
    assert lines[0].startswith("| variant (gender) | n | accuracy | f1_macro")
    assert any(line.startswith("| base | 2 |") for line in lines)
    assert any(line.startswith("| fusion=mean | 2 |") for line in lines)
    assert "±" in res.table
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("recbert-ablate")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{res.run_id}'")
    assert sorted(r.data.params["variant"] for r in children) == ["base", "fusion=mean"]
    assert all("accuracy_mean" in r.data.metrics for r in children)
    # each variant run holds run_classification's run, whose children are the folds
    for variant in children:
        (cls_run,) = client.search_runs([exp.experiment_id],
                                        filter_string=f"tags.mlflow.parentRunId = '{variant.info.run_id}'")
        folds = client.search_runs([exp.experiment_id],
                                   filter_string=f"tags.mlflow.parentRunId = '{cls_run.info.run_id}'")
        assert sorted(r.data.params["fold"] for r in folds) == ["0", "1"]
        assert all("test/auc" in r.data.metrics and "curve/auc" in r.data.metrics for r in folds)
        assert "gender_results.md" in [a.path for a in client.list_artifacts(cls_run.info.run_id)]
    artifacts = [a.path for a in client.list_artifacts(res.run_id)]
    assert "ablation.md" in artifacts
    assert [a.path for a in client.list_artifacts(res.run_id, "plots")] == ["plots/ablation.png"]


def test_cli_ablate_reports_config_errors(capsys):
    assert main(["ablate", "--no-mlflow", "--set", "grid.mode=random"]) == 2
    assert "grid.mode" in capsys.readouterr().err
