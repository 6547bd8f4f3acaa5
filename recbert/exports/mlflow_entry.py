"""The models-from-code entry MLflow runs when it loads a recbert MLflow model
(:mod:`recbert.exports.mlflow_model`): it names the python model, nothing else."""

from mlflow.models import set_model

from recbert.exports.mlflow_model import RecommenderModel

set_model(RecommenderModel())
