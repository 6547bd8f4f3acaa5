"""The models-from-code entry MLflow runs when it loads a fine-tuned head's MLflow model
(:mod:`recbert.exports.mlflow_model`): it names the python model, nothing else."""

from mlflow.models import set_model

from recbert.exports.mlflow_model import HeadModel

set_model(HeadModel())
