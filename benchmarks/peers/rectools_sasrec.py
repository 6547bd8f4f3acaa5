"""RecTools SASRec on Beauty for a fixed training wall budget, then full-ranking test
metrics; one JSON line for ``benchmarks/peers.py``. Runs in the virtualenv that
``benchmarks/peers/setup.sh`` put RecTools in (named in ``$PEER_VENV/rectools.status``):

    ~/.cache/recbert-peers/venv/bin/python benchmarks/peers/rectools_sasrec.py [--budget-seconds 300]

Model: RecTools' ``SASRecModel`` with hidden 64, 2 blocks, 2 heads, session_max_len 50,
dropout 0.5, softmax loss over the full catalogue, batch 256, Adam lr 1e-3, item-id
embeddings only. Its blocks are the SASRec authors' (``SASRecTransformerLayers``): the
feed-forward is 64 wide with ReLU, not 256 with GELU, and there is no inner-size knob.
Leave-one-out built here: the model trains on all but each user's last two events; the
test user's input is all but the last event (its second-to-last, the validation item,
included, as in recbert and RecBole); the target is the last. One training "sequence" is
one user's training sequence (RecTools' SASRec data preparator: shifted sequence, a
target at every position), counted from the batches; targets are its non-padding labels.
RecTools keeps only the last session_max_len + 1 training events of a user, so the older
part of a long history is never a target (recbert's windows and RecBole's prefixes cover
it): fewer targets per epoch than the other two.
Training runs through RecTools' Lightning trainer until the epoch that crosses the budget
has ended (a callback sets ``should_stop``), without validation.

Metrics from RecTools' ``recommend(k=10)``: ``unseen`` with ``filter_viewed=True`` (the
user's input history removed: recbert's unseen protocol), ``all`` with
``filter_viewed=False``; rank = position in the top 10 (ties broken by RecTools), a miss
outside it. Items that occur only as validation or test targets are unknown to the model
and can never be recommended.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_lightning import Callback, Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import K, emit, metrics, parse_args, read_s3rec  # noqa: E402

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

import rectools  # noqa: E402
from rectools import Columns  # noqa: E402
from rectools.dataset import Dataset  # noqa: E402
from rectools.models import SASRecModel  # noqa: E402
from rectools.models.nn.item_net import IdEmbeddingsItemNet  # noqa: E402


class EpochBudget(Callback):
    """Stops training after the epoch that crosses ``budget_seconds``; counts each
    epoch's seconds, sequences and targets."""

    def __init__(self, budget_seconds: float) -> None:
        self.budget_seconds = budget_seconds
        self.started: float | None = None
        self.epoch_seconds: list[float] = []
        self.sequences = self.targets = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: object) -> None:
        self.epoch_start = time.perf_counter()
        self.started = self.started or self.epoch_start
        self.sequences = self.targets = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: object, outputs: object, batch: dict,
                           batch_idx: int) -> None:
        self.sequences += int(batch["x"].shape[0])
        self.targets += int((batch["y"] != 0).sum())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: object) -> None:
        now = time.perf_counter()
        self.epoch_seconds.append(now - self.epoch_start)
        if now - self.started > self.budget_seconds:
            trainer.should_stop = True


def events(rows: list[tuple[str, list[str]]]) -> pd.DataFrame:
    """One row per event with its position in the user's line and the line's length."""
    frames = [pd.DataFrame({Columns.User: user, Columns.Item: items, "pos": np.arange(len(items)),
                            "n": len(items)}) for user, items in rows]
    df = pd.concat(frames, ignore_index=True)
    df[Columns.Weight] = 1.0
    df[Columns.Datetime] = pd.to_datetime(df["pos"], unit="s")  # keeps the order, no clock in the file
    return df


def test_ranks(model: SASRecModel, history: Dataset, test: pd.DataFrame, filter_viewed: bool) -> np.ndarray:
    reco = model.recommend(users=test[Columns.User].unique(), dataset=history, k=K, filter_viewed=filter_viewed)
    hits = test.merge(reco, on=[Columns.User, Columns.Item], how="left")
    return np.where(hits[Columns.Rank].isna(), float(K), hits[Columns.Rank] - 1.0)  # 0-based, miss >= K


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(args.threads)
    seed_everything(0, verbose=False)
    t0 = time.perf_counter()
    df = events(read_s3rec(args.data))
    columns = [Columns.User, Columns.Item, Columns.Weight, Columns.Datetime]
    train = Dataset.construct(df.loc[df["pos"] < df["n"] - 2, columns])
    history = Dataset.construct(df.loc[df["pos"] < df["n"] - 1, columns])
    test = df.loc[df["pos"] == df["n"] - 1, [Columns.User, Columns.Item]]
    budget = EpochBudget(args.budget_seconds)

    def trainer() -> Trainer:
        return Trainer(max_epochs=1_000_000, callbacks=[budget], accelerator="cpu", devices=1, logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)

    model = SASRecModel(n_factors=64, n_blocks=2, n_heads=2, dropout_rate=0.5, session_max_len=50,
                        loss="softmax", lr=1e-3, batch_size=256, item_net_block_types=(IdEmbeddingsItemNet,),
                        get_trainer_func=trainer, recommend_torch_device="cpu")
    prep_seconds = time.perf_counter() - t0
    model.fit(train)
    budget = next(c for c in model.fit_trainer.callbacks if isinstance(c, EpochBudget))  # the fit's copy
    t0 = time.perf_counter()
    ranks = {"all": test_ranks(model, history, test, False), "unseen": test_ranks(model, history, test, True)}
    eval_seconds = time.perf_counter() - t0
    emit({"system": "rectools", "version": rectools.__version__, "budget_seconds": args.budget_seconds,
          "epoch_seconds": budget.epoch_seconds, "prep_seconds": prep_seconds, "eval_seconds": eval_seconds,
          "sequences_per_epoch": budget.sequences, "targets_per_epoch": budget.targets,
          "sequence_unit": "user training sequence (shifted, a target at every position)",
          "notes": "SASRec authors' blocks (pre-norm, ReLU feed-forward 64 wide: no inner-size knob), softmax over "
                   "all items at every position, only a user's last 51 training events; metrics from "
                   "recommend(k=10), ties broken by RecTools",
          "test_users": len(test), "items": int(df[Columns.Item].nunique()),
          "metrics": {name: metrics(r) for name, r in ranks.items()}})


if __name__ == "__main__":
    main()
