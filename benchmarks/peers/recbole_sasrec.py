"""RecBole 1.2.1 SASRec on Beauty for a fixed training wall budget, then full-ranking
test metrics; one JSON line for ``benchmarks/peers.py``. Runs in the peer virtualenv
(``benchmarks/peers/setup.sh``):

    ~/.cache/recbert-peers/venv/bin/python benchmarks/peers/recbole_sasrec.py [--budget-seconds 300]

Model: hidden 64, 2 layers, 2 heads, inner 256, max_len 50, dropout 0.5 (hidden and
attention), CE loss over the full catalogue, batch 256, Adam lr 1e-3. Data: Beauty.txt
as a RecBole atomic ``.inter`` file (timestamp = the event's position in its line),
leave-one-out (``LS: valid_and_test``, order ``TO``), full ranking. Training goes through
RecBole's own ``Trainer._train_epoch``, epoch after epoch, without validation, until the
epoch that crosses the budget has ended. A training "sequence" is one instance of
RecBole's training dataloader: SASRec there trains on every prefix of each user's
training sequence (one target each), so sequences = targets per epoch.

Metrics: ``all`` and ``unseen`` ranks computed here from ``full_sort_predict`` scores
exactly as recbert ranks (``common.tie_aware_ranks``, unseen masking the user's whole
input history), plus ``recbole_own``: RecBole's own evaluator on the same test data
(``eval_seconds`` is that evaluator's time).
RecBole's full-sort evaluation of a *sequential* model masks only the padding item, not
the history (``FullSortEvalDataLoader`` yields no history index for sequential models),
so its own figure is the ``all`` protocol.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, metrics, parse_args, read_s3rec, tie_aware_ranks, train_for_budget  # noqa: E402

warnings.filterwarnings("ignore")  # RecBole and ray on current pandas/torch: deprecation noise

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.model.sequential_recommender import SASRec  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
import recbole  # noqa: E402

SETTINGS = {
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": 50,
    "hidden_size": 64, "n_layers": 2, "n_heads": 2, "inner_size": 256,
    "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
    "loss_type": "CE", "train_neg_sample_args": None,
    "train_batch_size": 256, "eval_batch_size": 1024, "learning_rate": 1e-3, "learner": "adam",
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10",
    "use_gpu": False, "seed": 0, "worker": 0, "show_progress": False,
}


def write_atomic(rows: list[tuple[str, list[str]]], folder: Path) -> None:
    """``folder/beauty.inter``: one event a line, timestamp = position in the user's line."""
    folder.mkdir(parents=True)
    with open(folder / "beauty.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in rows:
            f.writelines(f"{user}\t{item}\t{i}\n" for i, item in enumerate(items))


def histories(dataset) -> dict[int, np.ndarray]:
    """Internal user id -> internal ids of all its items but the last (the test input).
    Call it before ``data_preparation``, which replaces ``inter_feat`` by the training
    instances."""
    feat = dataset.inter_feat
    users, items = np.asarray(feat[dataset.uid_field]), np.asarray(feat[dataset.iid_field])
    order = np.lexsort((np.asarray(feat[dataset.time_field]), users))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return {int(users[s]): items[s:e - 1] for s, e in zip(starts, ends)}


def test_ranks(trainer: Trainer, test_data, history: dict[int, np.ndarray], uid_field: str) -> dict[str, np.ndarray]:
    trainer.model.eval()
    parts: dict[str, list[np.ndarray]] = {"all": [], "unseen": []}
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, _, targets = trainer._full_sort_batch_eval(batch)
            seen = torch.zeros(scores.shape, dtype=torch.bool)
            for row, user in enumerate(interaction[uid_field].tolist()):
                seen[row, torch.from_numpy(history[user])] = True
            for name, r in tie_aware_ranks(scores, targets, seen).items():
                parts[name].append(r)
    return {name: np.concatenate(p) for name, p in parts.items()}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value options from the command line
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # RecBole writes log_tensorboard/ and saved/ under the working directory
        t0 = time.perf_counter()
        write_atomic(read_s3rec(args.data), Path(tmp) / "beauty")
        config = Config(model="SASRec", dataset="beauty", config_dict={**SETTINGS, "data_path": tmp})
        torch.set_num_threads(args.threads)
        dataset = create_dataset(config)
        history = histories(dataset)
        train_data, _, test_data = data_preparation(config, dataset)
        model = SASRec(config, train_data.dataset)
        trainer = Trainer(config, model)
        prep_seconds = time.perf_counter() - t0
        print(f"data and model ready in {prep_seconds:.1f} s", file=sys.stderr, flush=True)
        instances = len(train_data.dataset)
        epoch_seconds = train_for_budget(lambda epoch: trainer._train_epoch(train_data, epoch), args.budget_seconds)
        t0 = time.perf_counter()
        own = trainer.evaluate(test_data, load_best_model=False)  # RecBole's own (and it readies the trainer)
        eval_seconds = time.perf_counter() - t0
        ranks = test_ranks(trainer, test_data, history, dataset.uid_field)
    emit({"system": "recbole", "version": recbole.__version__, "budget_seconds": args.budget_seconds,
          "epoch_seconds": epoch_seconds, "prep_seconds": prep_seconds, "eval_seconds": eval_seconds,
          "sequences_per_epoch": instances, "targets_per_epoch": instances,
          "sequence_unit": "training instance (one prefix of a user's training sequence, one target)",
          "notes": "SASRec as shipped: post-norm blocks, GELU feed-forward 256 wide, CE over all items at the last "
                   "position of each prefix (inputs padded to 50); its own full-sort evaluator masks no history",
          "test_users": len(ranks["all"]), "items": dataset.item_num - 1,
          "metrics": {name: metrics(r) for name, r in ranks.items()},
          "recbole_own": {k: float(v) for k, v in own.items()}})


if __name__ == "__main__":
    main()
