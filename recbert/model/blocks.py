"""Residual feature-reuse blocks placed after the encoder: out = x + dropout(proj(f(x))).

Shapes: x [B, L, H], mask [B, L] bool (True = real token; None = all real) -> [B, L, H].
Padding never reaches real positions: padded inputs are zeroed before f, RNNs run packed on
the real tokens only, the transformer gets a key padding mask, and the residual branch is
zeroed at padded positions (there the block returns x unchanged). Zero-initialising ``proj``
makes the block exactly the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

REUSE_KINDS = ("lstm", "gru", "cnn", "transformer")  # the residual blocks x + f(x)


def _real_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """mask as bool [B, L]; all True when None."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.bool()


def run_rnn_packed(rnn: nn.RNNBase, x: Tensor, mask: Tensor) -> Tensor:
    """Run a batch_first RNN over each row's real tokens only.

    x [B, L, D], mask [B, L] bool whose real tokens are contiguous in each row (left- or
    right-padded). Rows are rotated to right-aligned for packing and rotated back, so the
    reverse direction starts at the last real token. Returns [B, L, D_out], zero at padding.
    """
    batch, length, _ = x.shape
    mask = mask.bool()
    lengths = mask.sum(dim=1)
    start = mask.int().argmax(dim=1)  # first real position; 0 for an all-pad row
    pos = torch.arange(length, device=x.device)
    to_right = (pos[None, :] + start[:, None]) % length  # [B, L]
    if not torch.equal(mask.gather(1, to_right), pos[None, :] < lengths[:, None]):
        raise ValueError("each row's real tokens must be contiguous (left- or right-padded)")

    x = x.masked_fill(~mask[..., None], 0.0)
    aligned = x.gather(1, to_right[..., None].expand_as(x))
    packed = pack_padded_sequence(
        aligned, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
    )
    out, _ = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
    from_right = (pos[None, :] - start[:, None]) % length
    out = out.gather(1, from_right[..., None].expand(-1, -1, out.size(-1)))
    return out.masked_fill(~mask[..., None], 0.0)


class ResidualReuseBlock(nn.Module):
    """x + dropout(proj(f(x))) with f a BiLSTM/BiGRU, a same-length 1-D conv + GELU, or one
    pre-norm transformer layer. RNNs output 2H, projected back to H by ``proj``."""

    def __init__(
        self,
        kind: str,
        hidden: int,
        dropout: float = 0.1,
        kernel_size: int = 3,
        heads: int = 2,
    ) -> None:
        super().__init__()
        if kind not in REUSE_KINDS:
            raise ValueError(f"unknown reuse block kind {kind!r}; allowed: {REUSE_KINDS}")
        self.kind = kind
        f_out = hidden
        if kind in ("lstm", "gru"):
            rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
            self.f: nn.Module = rnn_cls(hidden, hidden, batch_first=True, bidirectional=True)
            f_out = 2 * hidden
        elif kind == "cnn":
            if kernel_size < 1:
                raise ValueError(f"kernel_size={kernel_size} must be >= 1")
            self.f = nn.Conv1d(hidden, hidden, kernel_size, padding="same")
        else:
            if heads < 1 or hidden % heads:
                raise ValueError(f"heads={heads} must be >= 1 and divide hidden={hidden}")
            self.f = nn.TransformerEncoderLayer(
                hidden,
                heads,
                dim_feedforward=4 * hidden,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
        self.proj = nn.Linear(f_out, hidden)
        self.dropout = nn.Dropout(dropout)

    def _features(self, x: Tensor, mask: Tensor) -> Tensor:
        """f(x) [B, L, f_out]; real positions depend on real inputs only."""
        if self.kind in ("lstm", "gru"):
            return run_rnn_packed(self.f, x, mask)
        x = x.masked_fill(~mask[..., None], 0.0)
        if self.kind == "cnn":
            return F.gelu(self.f(x.transpose(1, 2)).transpose(1, 2))
        # An all-pad row would softmax over nothing (NaN): let it attend to its zeros.
        key_pad = ~mask & mask.any(dim=1, keepdim=True)
        return self.f(x, src_key_padding_mask=key_pad)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = _real_mask(x, mask)
        delta = self.dropout(self.proj(self._features(x, mask)))
        return x + delta.masked_fill(~mask[..., None], 0.0)


class IdentityBlock(nn.Module):
    """No reuse block: returns x; accepts (x, mask) like ResidualReuseBlock."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x


def _residual(kind: str) -> Callable[..., nn.Module]:
    def build(hidden: int, dropout: float, kernel_size: int, heads: int) -> nn.Module:
        return ResidualReuseBlock(kind, hidden, dropout, kernel_size=kernel_size, heads=heads)
    return build


# reuse block kind -> builder(hidden, dropout, kernel_size, heads): the one list of choices
REUSE_BLOCKS: dict[str, Callable[..., nn.Module]] = {
    "none": lambda hidden, dropout, kernel_size, heads: IdentityBlock(),
    **{kind: _residual(kind) for kind in REUSE_KINDS},
}


def build_reuse_block(
    kind: str | None,
    hidden: int,
    dropout: float = 0.1,
    kernel_size: int = 3,
    heads: int = 2,
) -> nn.Module:
    """The block of :data:`REUSE_BLOCKS` named ``kind`` (None = 'none': IdentityBlock)."""
    kind = "none" if kind is None else kind
    if kind not in REUSE_BLOCKS:
        raise ValueError(f"unknown reuse block kind {kind!r}; allowed: {(None, *REUSE_BLOCKS)}")
    return REUSE_BLOCKS[kind](hidden, dropout, kernel_size, heads)
