"""RunConfig: round trips, the flat MLflow view, override parsing and coercion,
unknown keys, Literal checks, cross-field validation and config files."""

from __future__ import annotations

import json

import pytest

from recbert.config import DataConfig, EvalConfig, ModelConfig, RunConfig, StageConfig
from recbert.errors import ConfigError


def test_defaults_round_trip_through_dict_and_json(tmp_path):
    cfg = RunConfig()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    # also through the JSON file written by save()
    path = tmp_path / "run.json"
    cfg.save(path)
    assert RunConfig.load(path) == cfg


def test_non_default_round_trip():
    cfg = RunConfig.load(overrides=[
        "model.hidden=32", "model.heads=4", "model.feature_cardinalities={\"brand\": 7}",
        "data.item_features=items.parquet", "data.item_feature_columns=[\"brand\",\"cat\"]",
        "train.max_minutes=2.5", "threads=3", "eval.ks=[5,10]",
    ])
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back != RunConfig()
    assert back.model.feature_cardinalities == {"brand": 7}
    assert back.data.item_feature_columns == ["brand", "cat"]


def test_stage_defaults_differ_between_pretrain_and_train():
    cfg = RunConfig()
    assert cfg.pretrain.epochs == 0
    assert cfg.train.epochs == 30


def test_flat_keys_are_dotted_and_values_scalar():
    cfg = RunConfig()
    flat = cfg.flat()
    assert flat["model.hidden"] == 64
    assert flat["train.epochs"] == 30
    assert flat["pretrain.epochs"] == 0
    assert flat["seed"] == 42
    assert flat["data.item_features"] is None
    assert json.loads(flat["eval.ks"]) == [1, 5, 10, 20]
    assert json.loads(flat["model.feature_cardinalities"]) == {}
    for key, value in flat.items():
        assert value is None or isinstance(value, (str, int, float, bool)), (key, value)
    sections = {"data", "model", "pretrain", "train", "eval", "tracking", "checkpoint"}
    for key in flat:
        head, _, tail = key.partition(".")
        if tail:
            assert head in sections, key
            assert "." not in tail, key
    # one flat key per leaf field of every section
    n_leaves = sum(len(getattr(cfg, s).__dataclass_fields__) for s in sections)
    n_top = len([k for k in flat if "." not in k])
    assert len(flat) == n_leaves + n_top
    assert n_top == 6  # seed, device, threads, out_dir, refit, init_from


def test_unknown_key_names_it_and_suggests_the_close_one():
    with pytest.raises(ConfigError) as exc:
        RunConfig.load(overrides=["model.hiden=32"])
    msg = str(exc.value)
    assert "'model.hiden'" in msg
    assert "did you mean 'model.hidden'" in msg


def test_unknown_key_without_close_match_lists_known_keys():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict({"eval": {"zzzzzz": 1}})
    msg = str(exc.value)
    assert "'eval.zzzzzz'" in msg
    assert "select_metric" in msg and "sampled_negatives" in msg


def test_unknown_section_suggests_close_one():
    with pytest.raises(ConfigError, match=r"'modl'.*did you mean 'model'"):
        RunConfig.from_dict({"modl": {"hidden": 8}})


@pytest.mark.parametrize("override, key", [
    ("model.norm=middle", "model.norm"),
    ("train.objective=clm", "train.objective"),
    ("data.split=random", "data.split"),
    ("train.schedule=step", "train.schedule"),
    ("model.fusion=weighted", "model.fusion"),
    ("model.reuse_block=mamba", "model.reuse_block"),
    ("train.loss=sampled", "train.loss"),
])
def test_literal_violations(override, key):
    with pytest.raises(ConfigError) as exc:
        RunConfig.load(overrides=[override])
    assert repr(key) in str(exc.value)
    assert "must be one of" in str(exc.value)


def test_choices_come_from_the_registries_that_build_them():
    """A kind added to a registry is a valid config value, with nothing else to edit."""
    import typing

    from recbert.config import ModelConfig, StageConfig
    from recbert.model.blocks import REUSE_BLOCKS
    from recbert.model.fusion import FUSIONS
    from recbert.training.losses import LOSSES

    hints = typing.get_type_hints(ModelConfig)
    assert typing.get_args(hints["fusion"]) == tuple(FUSIONS)
    assert typing.get_args(hints["reuse_block"]) == tuple(REUSE_BLOCKS)
    assert typing.get_args(typing.get_type_hints(StageConfig)["loss"]) == tuple(LOSSES)
    from recbert.data.augmentations import AUGMENTATIONS
    from recbert.training.objectives import OBJECTIVES

    stage = typing.get_type_hints(StageConfig)
    assert typing.get_args(typing.get_args(stage["augmentations"])[0]) == tuple(AUGMENTATIONS)
    # config cannot import the objectives (they import it): the list is restated, and must agree
    assert typing.get_args(stage["objective"]) == tuple(OBJECTIVES)


def test_literal_accepts_allowed_values():
    cfg = RunConfig.load(overrides=["model.norm=post", "data.split=time", "model.attention=causal"])
    assert (cfg.model.norm, cfg.data.split, cfg.model.attention) == ("post", "time", "causal")


def test_override_type_coercion():
    cfg = RunConfig.load(overrides=[
        "model.hidden=128", "eval.ks=[1,10]", "model.residual_attention=true",
        "tracking.enabled=no", "train.lr=0.005", "model.dropout=0",
        "tracking.run_name=123", "eval.exclude_seen=True",
    ])
    assert cfg.model.hidden == 128 and type(cfg.model.hidden) is int
    assert cfg.eval.ks == [1, 10] and all(type(k) is int for k in cfg.eval.ks)
    assert cfg.model.residual_attention is True
    assert cfg.tracking.enabled is False
    assert cfg.eval.exclude_seen is True
    assert cfg.train.lr == 0.005 and type(cfg.train.lr) is float
    assert cfg.model.dropout == 0.0 and type(cfg.model.dropout) is float
    assert cfg.tracking.run_name == "123"


def test_comma_list_and_integral_float_coercion():
    cfg = RunConfig.from_dict({"eval": {"ks": "1,10"}, "model": {"hidden": 32.0}})
    assert cfg.eval.ks == [1, 10]
    assert cfg.model.hidden == 32 and type(cfg.model.hidden) is int


@pytest.mark.parametrize("override, key", [
    ("model.hidden=abc", "model.hidden"),
    ("model.hidden=1.5", "model.hidden"),
    ("model.hidden=true", "model.hidden"),
    ("tracking.enabled=maybe", "tracking.enabled"),
    ("train.lr=fast", "train.lr"),
    ("eval.ks=5", "eval.ks"),
    ("eval.ks=[1,\"x\"]", "eval.ks[1]"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        RunConfig.load(overrides=[override])
    assert repr(key) in str(exc.value)


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        RunConfig.load(overrides=["model.hidden"])
    with pytest.raises(ConfigError, match="must be a table"):
        RunConfig.load(overrides=["model=3"])


def test_partial_section_override_keeps_other_defaults():
    cfg = RunConfig.load(overrides=["train.objective=next_item"])
    assert cfg.train.objective == "next_item"
    assert cfg.train.epochs == 30  # the train section's own default, not StageConfig's 0
    assert cfg.train.batch_size == 256
    assert cfg.pretrain == RunConfig().pretrain
    cfg = RunConfig.from_dict({"pretrain": {"epochs": 5}})
    assert cfg.pretrain.epochs == 5 and cfg.pretrain.objective == "mlm"
    assert cfg.train == RunConfig().train
    cfg = RunConfig.load(overrides=["model.layers=4"])
    assert cfg.model.layers == 4 and cfg.model.hidden == 64 and cfg.model.heads == 2


def test_overrides_apply_on_top_of_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nhidden = 32\nheads = 4\n[train]\nepochs = 3\n')
    cfg = RunConfig.load(path, ["model.hidden=16", "train.lr=0.01"])
    assert cfg.model.hidden == 16 and cfg.model.heads == 4
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01


def test_heads_must_divide_hidden():
    with pytest.raises(ConfigError, match=r"divisible"):
        RunConfig.load(overrides=["model.hidden=65"])
    with pytest.raises(ConfigError, match=r"divisible"):
        ModelConfig(hidden=64, heads=3)
    assert ModelConfig(hidden=63, heads=3).hidden == 63


def test_select_metric_must_use_a_k_in_ks():
    with pytest.raises(ConfigError, match="select_metric"):
        RunConfig.load(overrides=["eval.select_metric=ndcg@50"])
    with pytest.raises(ConfigError, match="select_metric"):
        RunConfig.load(overrides=["eval.ks=[1,5]"])  # default ndcg@10 no longer in ks
    with pytest.raises(ConfigError, match="select_metric"):
        EvalConfig(select_metric="recall@10")
    assert EvalConfig(ks=[3], select_metric="mrr").select_metric == "mrr"
    assert EvalConfig(ks=[3], select_metric="hr@3").ks == [3]


@pytest.mark.parametrize("make", [
    lambda: DataConfig(min_item_count=0),
    lambda: DataConfig(time_val_fraction=0.5),
    lambda: DataConfig(window_stride=0),
    lambda: ModelConfig(dropout=1.0),
    lambda: StageConfig(mask_prob=0.0),
    lambda: StageConfig(lr=0.0),
    lambda: StageConfig(batch_size=0),
    lambda: EvalConfig(ks=[0, 10]),
])
def test_value_range_validation(make):
    with pytest.raises(ConfigError):
        make()


def test_toml_and_json_files_load(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text(
        'seed = 7\n[data]\nsplit = "time"\n[eval]\nks = [1, 10]\nselect_metric = "hr@10"\n'
        '[tracking]\nenabled = false\n'
    )
    cfg = RunConfig.load(toml)
    assert cfg.seed == 7 and cfg.data.split == "time"
    assert cfg.eval.ks == [1, 10] and cfg.eval.select_metric == "hr@10"
    assert cfg.tracking.enabled is False
    assert cfg.model == ModelConfig()

    js = tmp_path / "b.json"
    js.write_text(json.dumps({"model": {"hidden": 48, "heads": 3}, "device": "cpu"}))
    cfg = RunConfig.load(js)
    assert cfg.model.hidden == 48 and cfg.model.heads == 3 and cfg.device == "cpu"
    assert cfg.train == RunConfig().train


def test_bad_files_give_config_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[model\nhidden = ")
    with pytest.raises(ConfigError) as exc:
        RunConfig.load(bad)
    assert str(bad) in str(exc.value) and "TOML" in str(exc.value)

    badj = tmp_path / "broken.json"
    badj.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        RunConfig.load(badj)

    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "missing.toml")
    other = tmp_path / "c.yaml"
    other.write_text("a: 1\n")
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        RunConfig.load(other)


def test_eval_item_chunk_is_automatic_by_default_and_must_be_positive():
    assert RunConfig().eval.item_chunk is None
    assert RunConfig.load(overrides=["eval.item_chunk=4096"]).eval.item_chunk == 4096
    with pytest.raises(ConfigError, match=r"eval.item_chunk must be >= 1"):
        RunConfig.load(overrides=["eval.item_chunk=0"])


def test_extends_lays_a_file_over_its_base_section_by_section(tmp_path):
    (tmp_path / "base.toml").write_text('seed = 1\nrefit = true\n[model]\nhidden = 32\nheads = 2\n'
                                        '[train]\nepochs = 7\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "alias.toml").write_text('extends = "../base.toml"\nseed = 5\n[model]\nhidden = 16\n')
    cfg = RunConfig.load(sub / "alias.toml", ["train.lr=0.01"])
    assert (cfg.seed, cfg.refit, cfg.model.hidden, cfg.model.heads, cfg.train.epochs, cfg.train.lr) == \
        (5, True, 16, 2, 7, 0.01)


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="extends itself"):
        RunConfig.load(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('extends = "missing.toml"\n')
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        RunConfig.load(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text('extends = 3\n')
    with pytest.raises(ConfigError, match="d.toml: extends must be a file name"):
        RunConfig.load(tmp_path / "d.toml")


def test_refit_needs_in_memory_data():
    with pytest.raises(ConfigError, match="refit"):
        RunConfig.from_dict({"refit": True, "data": {"shards": "sh"}})


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.toml")):
        RunConfig.load(path)
    beauty, recipe = RunConfig.load(root / "beauty.toml"), RunConfig.load(root / "sequential.toml")
    assert beauty.model == recipe.model and beauty.train == recipe.train and beauty.pretrain == recipe.pretrain
