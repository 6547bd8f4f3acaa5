"""MLflow tracking: every run's config as params, per-epoch and final metrics,
and the model directory as an artifact that can be loaded back by run id.

Local by default: ``sqlite:///mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts``, unless ``tracking.tracking_uri`` or ``$MLFLOW_TRACKING_URI``
says otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from recbert.config import TrackingConfig
from recbert.errors import CheckpointError, Interrupted, RecbertError
from recbert.io import exclusive

log = logging.getLogger("recbert.tracking")

DEFAULT_HOME = Path("mlruns")
MODEL_ARTIFACT = "model"  # the run's MLflow model (recbert.exports.mlflow_model)
RECBERT_ARTIFACT = "recbert_model"  # the recbert model directory inside it
ERROR_TAG = "recbert.error"  # the message of the error that ended a FAILED or KILLED run
PID_TAG, HOST_TAG = "recbert.pid", "recbert.host"  # the process a RUNNING run lives in (`recbert runs doctor`)
RESUMED_TAG = "recbert.resumed"  # how many times the run was resumed from a checkpoint
CHECKPOINT_TAG = "recbert.checkpoint"  # the checkpoint a resumed run continued from
MAX_TAG_LENGTH = 5000  # MLflow stores tag values of up to 8,000 characters


def tracking_uri(config: TrackingConfig) -> str:
    if config.tracking_uri:
        return config.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_HOME.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_HOME / 'mlflow.db').resolve()}"


def metric_key(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / :`` and spaces: ``ndcg@10`` -> ``ndcg_at_10``."""
    return re.sub(r"[^\w\-./: ]", "_", name.replace("@", "_at_"))


_READY: set[str] = set()  # the store URIs this process has opened (and so migrated)


def _client(config: TrackingConfig):
    from mlflow.tracking import MlflowClient  # mlflow is slow to import: only when tracking

    uri = tracking_uri(config)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if uri.startswith("sqlite:///") and uri not in _READY:
        # a new SQLite store is created and migrated by the first client that opens it;
        # processes opening it at once would race the schema migration: one at a time
        with exclusive(uri.removeprefix("sqlite:///"), wait=True, what="initialised"):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        _READY.add(uri)
        return client, uri
    return MlflowClient(tracking_uri=uri), uri


class Tracker:
    """One MLflow run. With ``enabled=False`` every call is a no-op and ``run_id`` is None."""

    def __init__(self, config: TrackingConfig, parent_run_id: Optional[str] = None):
        self.config = config
        self.run_id: Optional[str] = None
        self.client = None
        self.uri: Optional[str] = None
        self.parent_run_id = parent_run_id

    def start(self, params: dict[str, Any], run_name: Optional[str] = None,
              tags: Optional[dict[str, str]] = None) -> Optional[str]:
        """Create the run, log ``params`` and tag it with ``tags`` plus :func:`system_tags`.
        Its name: ``tracking.run_name`` when set, else ``run_name`` (or the experiment's)
        with the UTC start time and 4 random hex digits (not from the seeded generators)
        appended on a top-level run, so that names tell runs apart."""
        if not self.config.enabled:
            return None
        from mlflow.entities import Param

        self.client, self.uri = _client(self.config)
        exp_id = self._experiment_id()
        name = self.config.run_name or run_name or self.config.experiment
        if not self.config.run_name and not self.parent_run_id:
            name = f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
        all_tags = {**system_tags(), **(tags or {})}
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(exp_id, run_name=name, tags=all_tags)
        self.run_id = run.info.run_id
        items = [Param(k, "None" if v is None else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        log.info("MLflow run %s (experiment %r, %s)", self.run_id, self.config.experiment, self.uri)
        return self.run_id

    def _experiment_id(self) -> str:
        """The experiment's id, created when new (a process that loses the race to create
        it uses the winner's)."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.config.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///") and not self.config.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
            location = (DEFAULT_HOME / "artifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(self.config.experiment, artifact_location=location)
        except MlflowException:
            exp = self.client.get_experiment_by_name(self.config.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def resume(self, run_id: Optional[str], checkpoint: str | Path = "") -> None:
        """Continue run ``run_id`` (from a checkpoint): it is RUNNING again, in this
        process, with the resume counted; a run whose process still lives is refused.
        ``run_id`` None (the run was not tracked): nothing to continue."""
        if not self.config.enabled or run_id is None:
            return
        self.client, self.uri = _client(self.config)
        try:
            run = self.client.get_run(run_id)
        except Exception:
            raise CheckpointError(f"cannot resume MLflow run {run_id}: it is not in {self.uri} (set "
                                  "MLFLOW_TRACKING_URI / tracking.tracking_uri to the store it was logged to)") from None
        if run.info.status == "FINISHED":
            raise CheckpointError(f"run {run_id} has FINISHED: there is nothing to resume (start a new run)")
        if run.info.status == "RUNNING" and process_alive(run.data.tags):
            raise CheckpointError(f"run {run_id} is still running in process {run.data.tags.get(PID_TAG)} on "
                                  "this host; stop it first or wait for it")
        if run.info.status == "RUNNING":
            log.warning("run %s was left RUNNING by process %s, which is gone (SIGKILL, out of memory?): continuing it",
                        run_id, run.data.tags.get(PID_TAG, "?"))
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        times = int(run.data.tags.get(RESUMED_TAG, "0")) + 1
        for key, value in {**system_tags(), RESUMED_TAG: str(times), CHECKPOINT_TAG: str(checkpoint)}.items():
            self.client.set_tag(run_id, key, value)
        if ERROR_TAG in run.data.tags:
            self.client.delete_tag(run_id, ERROR_TAG)
        log.info("MLflow run %s resumed (was %s; resume %d)", run_id, run.info.status, times)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 500])

    def log_artifacts(self, local_dir: str | Path, artifact_path: Optional[str] = None) -> None:
        if self.run_id is not None:
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.run_id is not None:
            self.client.log_text(self.run_id, text, artifact_file)

    def register_model(self, name: str, description: str = "") -> Optional[str]:
        """A new version of registered model ``name`` (created when new) from this run's
        ``model`` artifact, with ``description``; returns the version."""
        if self.run_id is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
        version = self.client.create_model_version(name, source, run_id=self.run_id, description=description)
        return version.version

    def log_dataset(self, path: str | Path, name: str, sha256: str, context: str = "training") -> None:
        """Record the events file as the run's input dataset (MLflow's Datasets view): its
        path, a name and its content digest (the first 32 hex digits of its sha256); no data
        is read or copied."""
        if self.run_id is None:
            return
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(path).resolve()))
        dataset = MetaDataset(source, name=name, digest=sha256[:32])
        self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                                          [InputTag("mlflow.data.context", context)])])

    def log_figure(self, figure, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact (then closed)."""
        if self.run_id is not None:
            self.client.log_figure(self.run_id, figure, artifact_file)
        import matplotlib.pyplot as plt

        plt.close(figure)

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id is not None:
            self.client.set_tag(self.run_id, key, value)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def fail(self, exc: BaseException) -> None:
        """Mark the run FAILED with the error's one-line message as the ``recbert.error`` tag."""
        if self.run_id is None:
            return
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RecbertError) else str(exc)
        self.set_tag(ERROR_TAG, message[:MAX_TAG_LENGTH])
        self.end("FAILED")

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, (KeyboardInterrupt, Interrupted)):
            if self.run_id is not None:
                self.set_tag(ERROR_TAG, str(exc) or "interrupted (Ctrl-C)")
            self.end("KILLED")
        elif exc is not None:
            self.fail(exc)
        else:
            self.end("FINISHED")


def system_tags() -> dict[str, str]:
    """Where a run ran: recbert / torch / faiss versions, the git commit of the recbert
    source when it is a checkout, host, process id and torch threads."""
    import platform

    import torch

    tags = {"recbert.version": _version("recbert"), "recbert.torch_version": torch.__version__,
            "recbert.faiss_version": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss"),
            "recbert.python_version": platform.python_version(), HOST_TAG: socket.gethostname(),
            PID_TAG: str(os.getpid()), "recbert.threads": str(torch.get_num_threads()),
            "recbert.cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {k: v for k, v in tags.items() if v}


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def git_commit() -> Optional[str]:
    """The commit of the checkout recbert is imported from (None when not a git checkout);
    ``-dirty`` is appended when tracked files have changes."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def process_alive(tags: dict[str, str]) -> bool:
    """Whether the process a run's tags name lives on this host (False for another host's
    run, which cannot be checked from here, and for runs without the tags)."""
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextmanager
def tracked(job: str, params: dict[str, Any], tracking: Optional[TrackingConfig]):
    """An MLflow run for one job (export, index build, batch recommendations; ``tracking=None``:
    not tracked). The training run the model came from, when known, is linked by the tag
    ``recbert.source_run_id``."""
    tracker = Tracker(tracking if tracking is not None else TrackingConfig(enabled=False))
    with tracker:
        tracker.start(params, run_name=job)
        if params.get("source_run_id"):
            tracker.set_tag("recbert.source_run_id", str(params["source_run_id"]))
        tracker.set_tag("recbert.job", job)
        yield tracker


def download_model(run_id: str, config: TrackingConfig | None = None, dst: str | Path | None = None) -> Path:
    """Fetch the recbert model directory logged by run ``run_id``: inside the MLflow model
    at ``model/`` (its ``recbert_model`` artifact), or ``model/`` itself for runs logged
    before models were MLflow models."""
    import mlflow

    cfg = config or TrackingConfig()
    uri = tracking_uri(cfg)
    client, _ = _client(cfg)
    try:
        client.get_run(run_id)
    except Exception:
        raise CheckpointError(f"no MLflow run {run_id!r} in {uri}") from None
    try:
        path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT,
                                                        tracking_uri=uri, dst_path=str(dst) if dst else None))
    except Exception as exc:
        raise CheckpointError(f"run {run_id} has no '{MODEL_ARTIFACT}' artifact: {exc}") from None
    return recbert_dir_of(path)


def recbert_dir_of(path: Path) -> Path:
    """The recbert model directory in a downloaded ``model`` artifact (see :func:`download_model`)."""
    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        return path
    import yaml

    try:
        flavor = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]
        return path / flavor["artifacts"][RECBERT_ARTIFACT]["path"]
    except (KeyError, TypeError, yaml.YAMLError):
        raise CheckpointError(f"{mlmodel} is an MLflow model without a '{RECBERT_ARTIFACT}' artifact: not a "
                              "recbert model") from None
