"""Events to training-ready splits in one call: load and check the events file, build
(or reuse) the item vocabulary, group per-user sequences, and split them as the run
config says (leave-one-out or a global time split); or, with ``data.shards``, write (or
reuse) sequence shards for streamed training (:mod:`recbert.data.shards`)."""

from __future__ import annotations

import logging
from typing import Optional

from recbert.config import RunConfig
from recbert.data.events import EventSource, load_events
from recbert.data.sequences import Splits, build_sequences, leave_one_out, time_split
from recbert.data.shards import ShardSet, ensure_shards
from recbert.data.vocab import UNK, ItemVocab
from recbert.errors import DataError

log = logging.getLogger("recbert.data")


def prepare_data(config: RunConfig, events: Optional[EventSource] = None,
                 vocab: Optional[ItemVocab] = None) -> tuple[ItemVocab, Splits]:
    """Load events, build (or reuse) the vocabulary, and split."""
    d = config.data
    if d.shards is not None:
        return prepare_shards(config, events, vocab)
    df = load_events(events if events is not None else d.events, d.user_col, d.item_col, d.time_col)
    if vocab is None:
        vocab = ItemVocab.build(df["item_id"], d.min_item_count, d.max_items, d.hash_buckets)
    seqs = build_sequences(df, vocab, d.min_user_events)
    unk = int((seqs.items == UNK).sum())
    hashed = int((seqs.items >= vocab.first_bucket).sum())
    for n, where in ((unk, "[UNK]"), (hashed, f"one of the {vocab.hash_buckets} hash buckets (data.hash_buckets)")):
        if n:
            log.info("%d of %d events (%.1f%%) are items without a token (rarer than data.min_item_count, beyond "
                     "data.max_items, or unseen): they read as %s", n, len(seqs.items), 100 * n / len(seqs.items),
                     where)
    splits = leave_one_out(seqs) if d.split == "leave_one_out" else time_split(
        seqs, d.time_val_fraction, d.time_test_fraction)
    buckets = f" + {vocab.hash_buckets} hash buckets" if vocab.hash_buckets else ""
    log.info("%d events, %d users, %d items%s; %d train sequences, %d val and %d test users",
             df.height, len(seqs), vocab.n_items, buckets, len(splits.train), len(splits.val), len(splits.test))
    return vocab, splits


def prepare_shards(config: RunConfig, events: Optional[EventSource] = None,
                   vocab: Optional[ItemVocab] = None) -> tuple[ItemVocab, Splits]:
    """The out-of-core path (``data.shards``): sequence shards written (or reused) from the
    events, with ``vocab`` when given, then :func:`shard_splits`."""
    source = events if events is not None else config.data.events
    return shard_splits(ensure_shards(source, config.data, vocab), vocab)


def shard_splits(shards: ShardSet, vocab: Optional[ItemVocab] = None) -> tuple[ItemVocab, Splits]:
    """The shards' vocabulary and splits: training streams the shards, the validation and
    test users are read into memory. A given ``vocab`` must be the one the shards were
    written with."""
    shard_vocab = shards.vocab()
    if vocab is not None and vocab != shard_vocab:
        raise DataError(f"the shards in {shards.directory} were written with another item vocabulary than the "
                        "model's; name a new data.shards folder to write them with the model's")
    splits = Splits(shards, shards.eval_set("val"), shards.eval_set("test"))
    log.info("%d events, %d users, %d items in %d shard(s); %d val and %d test users", shards.n_events,
             shards.n_users, shard_vocab.n_items, len(shards.files), len(splits.val), len(splits.test))
    return shard_vocab, splits
