"""A trained recommender, or a fine-tuned head, as an MLflow model (``python_function``
flavour), so that what MLflow users reach for works on it:
``mlflow.pyfunc.load_model("runs:/<id>/model")``, ``mlflow models serve``, the model
registry, a signature and an input example.

The MLflow model folder is written by :func:`save_mlflow_model`: the recbert model
directory (config, safetensors weights, vocabulary, run config) travels as the artifact
``recbert_model``, the recbert package itself as the model's code (so it loads where
recbert is not installed), and the python model is *code* (:mod:`recbert.exports.mlflow_entry`,
MLflow's models-from-code), not a pickle: loading it unpickles nothing. Input: a
DataFrame with an ``items`` column, each row a user's history of ORIGINAL item ids, oldest
first; params ``k`` (10) and ``exclude_seen`` (true). Output: one row per history with
``item_ids`` and ``scores`` (lists of length k, best first).

A head (:func:`save_head_mlflow_model`, the artifact ``recbert_head``,
:mod:`recbert.exports.mlflow_head_entry`) takes the same ``items`` column and answers a
classifier's ``prediction`` (the class name, or index), ``probability`` and ``proba`` (every
class; multi-label heads: ``proba`` only), or, with an ``item`` column of candidates, a CTR
model's ``click_proba``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from recbert.errors import RecbertError
from recbert.tracking import RECBERT_ARTIFACT

ARTIFACT = RECBERT_ARTIFACT  # the recbert model directory inside the MLflow model's artifacts
HEAD_ARTIFACT = "recbert_head"  # a fine-tuned head's directory inside its MLflow model
PACKAGE = Path(__file__).resolve().parents[1]  # recbert/, copied into the model: it loads without an install
ENTRY = Path(__file__).with_name("mlflow_entry.py")
HEAD_ENTRY = Path(__file__).with_name("mlflow_head_entry.py")
DEFAULT_PARAMS = {"k": 10, "exclude_seen": True}

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # mlflow is a dependency; this keeps the module importable without it
    PythonModel = object  # type: ignore[misc,assignment]


class RecommenderModel(PythonModel):
    """The python model MLflow loads: a :class:`SequenceRecommender` from the artifact."""

    model: Any = None

    def load_context(self, context) -> None:
        from recbert.model.recommender import SequenceRecommender

        self.model = SequenceRecommender.from_pretrained(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        return recommend_frame(self.model, model_input, {**DEFAULT_PARAMS, **(params or {})})


class HeadModel(PythonModel):
    """The python model of a fine-tuned head: :func:`recbert.heads.load_head` of the artifact."""

    model: Any = None

    def load_context(self, context) -> None:
        from recbert.heads import load_head

        self.model = load_head(context.artifacts[HEAD_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        return head_frame(self.model, model_input)


def _histories(frame: pd.DataFrame, columns: tuple[str, ...] = ("items",)) -> list[list]:
    missing = [c for c in columns if not isinstance(frame, pd.DataFrame) or c not in frame.columns]
    if missing:
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise RecbertError(f"the input needs the column(s) {missing} ('items': a list of item ids per row), got {got}")
    return [[] if h is None else list(h) for h in frame["items"]]


def head_frame(model, frame: pd.DataFrame) -> pd.DataFrame:
    """A head's answers for ``items`` histories (and ``item`` candidates for CTR)."""
    import torch

    from recbert.heads import CTRModel
    from recbert.heads.base import rows_from_tokens

    is_ctr = isinstance(model, CTRModel)
    histories = _histories(frame, ("items", "item") if is_ctr else ("items",))
    vocab = model.vocab
    encode = (lambda ids: vocab.encode(np.asarray(ids, dtype=object if vocab.is_string else None)))
    window = int(model.metadata.get("window") or model.model_config.max_len)
    rows = rows_from_tokens([encode(h) for h in histories], window)
    with torch.no_grad():
        if is_ctr:
            items = torch.from_numpy(encode(list(frame["item"])).astype(np.int64))
            return pd.DataFrame({"click_proba": model.predict_proba(rows, items).numpy().astype(np.float64)})
        p = model.predict_proba(rows).numpy().astype(np.float64)
    task = model.head_config.task
    if task == "binary":
        p = np.stack([1 - p, p], axis=1)
    out = {}
    if task != "multilabel":
        classes = model.metadata.get("classes")
        best = p.argmax(1)
        out["prediction"] = [str(classes[i]) for i in best] if classes is not None else best.astype(np.int64)
        out["probability"] = p[np.arange(len(p)), best]
    out["proba"] = [row.tolist() for row in p]
    return pd.DataFrame(out)


def recommend_frame(model, frame: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """``items`` histories -> ``item_ids`` / ``scores`` lists of the top ``params['k']``."""
    histories = _histories(frame)
    ids, scores = model.recommend(histories, k=int(params["k"]), exclude_seen=bool(params["exclude_seen"]))
    cast = str if model.vocab.is_string else int
    return pd.DataFrame({"item_ids": [[None if i is None else cast(i) for i in row] for row in ids],
                         "scores": [row.astype(np.float64).tolist() for row in scores]})


def signature_and_example(model) -> tuple[Any, pd.DataFrame]:
    """The model signature (items: an array of the vocabulary's id type; params k,
    exclude_seen) and an input example: the first few catalogue items as one history."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    id_type = DataType.string if model.vocab.is_string else DataType.long
    example_ids = [i for i in model.vocab.decode(np.arange(3, 3 + min(3, model.vocab.n_items))).tolist()]
    example = pd.DataFrame({"items": [[str(i) if model.vocab.is_string else int(i) for i in example_ids]]})
    signature = ModelSignature(
        inputs=Schema([ColSpec(Array(id_type), "items")]),
        outputs=Schema([ColSpec(Array(id_type), "item_ids"), ColSpec(Array(DataType.double), "scores")]),
        params=ParamSchema([ParamSpec("k", DataType.long, DEFAULT_PARAMS["k"]),
                            ParamSpec("exclude_seen", DataType.boolean, DEFAULT_PARAMS["exclude_seen"])]))
    return signature, example


def head_signature_and_example(model) -> tuple[Any, pd.DataFrame]:
    """A head's signature (items [+ item] -> its answers) and an input example."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    from recbert.heads import CTRModel

    vocab = model.vocab
    id_type = DataType.string if vocab.is_string else DataType.long
    ids = [str(i) if vocab.is_string else int(i) for i in vocab.decode(np.arange(3, 3 + min(4, vocab.n_items)))]
    inputs = [ColSpec(Array(id_type), "items")]
    example = {"items": [ids[:-1]]}
    if isinstance(model, CTRModel):
        inputs.append(ColSpec(id_type, "item"))
        example["item"] = [ids[-1]]
        outputs = [ColSpec(DataType.double, "click_proba")]
    else:
        outputs = []
        if model.head_config.task != "multilabel":
            kind = DataType.string if model.metadata.get("classes") is not None else DataType.long
            outputs += [ColSpec(kind, "prediction"), ColSpec(DataType.double, "probability")]
        outputs.append(ColSpec(Array(DataType.double), "proba"))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs)), pd.DataFrame(example)


def save_mlflow_model(model_dir: str | Path, out: str | Path) -> Path:
    """Write the MLflow model folder ``out`` for the recbert model directory ``model_dir``."""
    from recbert.model.recommender import SequenceRecommender

    model = SequenceRecommender.from_pretrained(model_dir)
    return _save(out, ENTRY, {ARTIFACT: str(model_dir)}, *signature_and_example(model))


def save_head_mlflow_model(head_dir: str | Path, out: str | Path) -> Path:
    """Write the MLflow model folder ``out`` for a saved fine-tuned head ``head_dir``."""
    from recbert.heads import load_head

    model = load_head(head_dir)
    return _save(out, HEAD_ENTRY, {HEAD_ARTIFACT: str(head_dir)}, *head_signature_and_example(model))


def _save(out: str | Path, entry: Path, artifacts: dict[str, str], signature, example: pd.DataFrame) -> Path:
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(str(out), python_model=str(entry), artifacts=artifacts, code_paths=[str(PACKAGE)],
                             signature=signature, input_example=example, pip_requirements=requirements())
    return Path(out)


def requirements() -> list[str]:
    """What a serving environment installs: recbert's own runtime requirements, pinned to
    the versions this process runs."""
    from importlib import metadata

    names = ["torch", "numpy", "pandas", "polars", "pyarrow", "safetensors", "tqdm", "mlflow"]
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out
