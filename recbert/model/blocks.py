"""Residual feature-reuse blocks placed after the encoder: out = x + dropout(proj(f(x))).

Shapes: x [B, L, H], mask [B, L] bool (True = real token; None = all real) -> [B, L, H].
Padding never reaches real positions: padded inputs are zeroed before f, RNNs run packed on
the real tokens only, the transformer gets a key padding mask, and the residual branch is
zeroed at padded positions (there the block returns x unchanged). Zero-initialising ``proj``
makes the block exactly the identity.

``causal=True`` (next-item training and serving, as the encoder's attention) restricts f to
each position's past, with the *same* parameters, so that an MLM-pretrained block carries
over to next-item fine-tuning: the RNNs keep their forward direction only (the backward
half of ``proj``'s input is zero; it is still computed, a small cost after the encoder), the
convolution drops its future taps (a kernel of 3 reads t-1 and t; tap weights keep their
offsets), and the transformer layer gets a causal mask. Bidirectional, every kind reads the
whole sequence, which next-item training would leak the targets through.
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

    def _features(self, x: Tensor, mask: Tensor, causal: bool) -> Tensor:
        """f(x) [B, L, f_out]; real positions depend on real inputs only (and, when
        ``causal``, on those at or before them)."""
        if self.kind in ("lstm", "gru"):
            out = run_rnn_packed(self.f, x, mask)
            if causal:  # forward direction only: [fwd | bwd] -> [fwd | 0]
                out = out * (torch.arange(out.size(-1), device=out.device) < out.size(-1) // 2)
            return out
        x = x.masked_fill(~mask[..., None], 0.0)
        if self.kind == "cnn":
            weight = self.f.weight * past_taps(self.f.kernel_size[0], self.f.weight.device) if causal else self.f.weight
            return F.gelu(F.conv1d(x.transpose(1, 2), weight, self.f.bias, padding="same").transpose(1, 2))
        if causal:
            return self.f(x, src_mask=causal_block_mask(mask, self.f.self_attn.num_heads))
        # An all-pad row would softmax over nothing (NaN): let it attend to its zeros.
        key_pad = ~mask & mask.any(dim=1, keepdim=True)
        return self.f(x, src_key_padding_mask=key_pad)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        mask = _real_mask(x, mask)
        delta = self.dropout(self.proj(self._features(x, mask, causal)))
        return x + delta.masked_fill(~mask[..., None], 0.0)


def past_taps(kernel_size: int, device: torch.device | None = None) -> Tensor:
    """``[kernel_size]`` 1.0 for the taps of a ``padding='same'`` convolution that read the
    current or an earlier position, 0.0 for those reading later ones (PyTorch pads ``same``
    with ``(k - 1) // 2`` on the left, so tap ``j`` reads offset ``j - (k - 1) // 2``)."""
    return (torch.arange(kernel_size, device=device) <= (kernel_size - 1) // 2).float()


def causal_block_mask(mask: Tensor, heads: int) -> Tensor:
    """``[B * heads, L, L]`` bool attention mask (True = may NOT attend) for a causal layer
    over rows with padding ``mask`` [B, L]: a position sees the real positions at or before
    it, and itself (so that a padded position, or an all-pad row, never softmaxes over
    nothing; its output is discarded)."""
    length = mask.size(1)
    pos = torch.arange(length, device=mask.device)
    allowed = (pos[None, :, None] >= pos[None, None, :]) & mask[:, None, :]
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=mask.device)
    return ~allowed.repeat_interleave(heads, dim=0)


class IdentityBlock(nn.Module):
    """No reuse block: returns x; accepts (x, mask, causal) like ResidualReuseBlock."""

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
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
