"""A trained recommender as an MLflow model (``python_function`` flavour), so that what
MLflow users reach for works on it: ``mlflow.pyfunc.load_model("runs:/<id>/model")``,
``mlflow models serve``, the model registry, a signature and an input example.

The MLflow model folder is written by :func:`save_mlflow_model`: the recbert model
directory (config, safetensors weights, vocabulary, run config) travels as the artifact
``recbert_model``, the recbert package itself as the model's code (so it loads where
recbert is not installed), and the python model is *code* (:mod:`recbert.exports.mlflow_entry`,
MLflow's models-from-code), not a pickle: loading it unpickles nothing. Input: a
DataFrame with an ``items`` column, each row a user's history of ORIGINAL item ids, oldest
first; params ``k`` (10) and ``exclude_seen`` (true). Output: one row per history with
``item_ids`` and ``scores`` (lists of length k, best first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from recbert.errors import RecbertError
from recbert.tracking import RECBERT_ARTIFACT

ARTIFACT = RECBERT_ARTIFACT  # the recbert model directory inside the MLflow model's artifacts
PACKAGE = Path(__file__).resolve().parents[1]  # recbert/, copied into the model: it loads without an install
ENTRY = Path(__file__).with_name("mlflow_entry.py")
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


def recommend_frame(model, frame: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """``items`` histories -> ``item_ids`` / ``scores`` lists of the top ``params['k']``."""
    if not isinstance(frame, pd.DataFrame) or "items" not in frame.columns:
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise RecbertError(f"the input needs an 'items' column (a list of item ids per row), got {got}")
    histories = [[] if h is None else list(h) for h in frame["items"]]
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


def save_mlflow_model(model_dir: str | Path, out: str | Path) -> Path:
    """Write the MLflow model folder ``out`` for the recbert model directory ``model_dir``."""
    import mlflow.pyfunc

    from recbert.model.recommender import SequenceRecommender

    model = SequenceRecommender.from_pretrained(model_dir)
    signature, example = signature_and_example(model)
    mlflow.pyfunc.save_model(str(out), python_model=str(ENTRY), artifacts={ARTIFACT: str(model_dir)},
                             code_paths=[str(PACKAGE)], signature=signature, input_example=example,
                             pip_requirements=requirements())
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
