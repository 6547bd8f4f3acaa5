"""CL4SRec's sequence augmentations on left-padded batches: what each keeps, hides or moves."""

import pytest
import torch

from recbert.data.augmentations import AUGMENTATIONS, augment, crop, mask, reorder
from recbert.data.vocab import MASK, PAD


def batch():
    """Rows of 0-10 events (tokens from 3 up, all distinct within a row), left-padded to 10."""
    rows = torch.zeros(11, 10, dtype=torch.long)
    for n in range(11):
        if n:
            rows[n, 10 - n:] = torch.arange(3 + 10 * n, 3 + 10 * n + n)
    return rows


def events(row):
    return [int(x) for x in row if x != PAD]


def left_padded(row):
    n = len(events(row))
    return bool((row[:len(row) - n] == PAD).all() and (row[len(row) - n:] != PAD).all())


@pytest.mark.parametrize("ratio", [0.2, 0.6, 1.0])
def test_crop_keeps_a_contiguous_run_of_the_share_asked_left_padded(ratio):
    rows = batch()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = crop(rows, ratio, g)
        assert out.shape == rows.shape
        for row, new in zip(rows, out):
            old, kept = events(row), events(new)
            assert left_padded(new)
            assert len(kept) == (max(1, int(ratio * len(old))) if old else 0)
            assert any(old[i:i + len(kept)] == kept for i in range(len(old) - len(kept) + 1))


def test_crop_draws_every_start():
    row = batch()[10:11]
    g = torch.Generator().manual_seed(1)
    firsts = {events(crop(row, 0.5, g)[0])[0] for _ in range(300)}
    assert firsts == set(events(row[0])[:6])  # runs of 5 from 10 events: 6 starts


@pytest.mark.parametrize("ratio", [0.3, 0.5, 1.0])
def test_mask_hides_the_share_asked_and_moves_nothing(ratio):
    rows = batch()
    out = mask(rows, ratio, torch.Generator().manual_seed(0))
    for row, new in zip(rows, out):
        n = len(events(row))
        hidden = new == MASK
        assert int(hidden.sum()) == int(ratio * n)
        assert (new[~hidden] == row[~hidden]).all() and not (row[hidden] == PAD).any()


def test_mask_places_are_spread_over_the_row():
    row = batch()[10:11]
    g = torch.Generator().manual_seed(2)
    counts = sum((mask(row, 0.3, g)[0] == MASK).long() for _ in range(2000))
    assert (counts > 450).all() and (counts < 750).all(), counts  # 600 expected per place


@pytest.mark.parametrize("ratio", [0.3, 0.6, 1.0])
def test_reorder_shuffles_one_contiguous_run_only(ratio):
    rows = batch()
    g = torch.Generator().manual_seed(0)
    moved_any = False
    for _ in range(20):
        out = reorder(rows, ratio, g)
        for row, new in zip(rows, out):
            old, got = events(row), events(new)
            assert left_padded(new) and sorted(got) == sorted(old)
            changed = [i for i, (a, b) in enumerate(zip(old, got)) if a != b]
            if changed:
                moved_any = True
                assert changed[-1] - changed[0] < int(ratio * len(old))  # within one run of that length
    assert moved_any


def test_augment_gives_each_row_one_kind_and_is_seeded():
    rows = batch()[1:].repeat(20, 1)
    ratios = {"crop": 0.5, "mask": 0.5, "reorder": 0.5}
    out = augment(rows, list(AUGMENTATIONS), ratios, torch.Generator().manual_seed(3))
    again = augment(rows, list(AUGMENTATIONS), ratios, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    shorter = (out != PAD).sum(1) < (rows != PAD).sum(1)
    masked = (out == MASK).any(1)
    assert not (shorter & masked).any()  # one augmentation per row
    assert shorter.any() and masked.any() and (~shorter & ~masked & (out != rows).any(1)).any()  # all three ran
    only_mask = augment(rows, ["mask"], ratios, torch.Generator().manual_seed(3))
    assert ((only_mask == MASK).sum(1) == (rows != PAD).sum(1) // 2).all()
