"""Transformer encoder: bidirectional or causal self-attention, pre- or post-LayerNorm,
optional residual attention (RealFormer) and BSARec's frequency branch beside the attention
(``model.filter_mix``, :mod:`recbert.model.frequency`). Returns every hidden state."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbert.config import ModelConfig
from recbert.data.vocab import PAD
from recbert.model.frequency import FrequencyRescale


@dataclass
class EncoderOutput:
    """``hidden_states[0]`` is the embedding output, ``hidden_states[i]`` layer i's."""

    last_hidden_state: Tensor  # [B, L, H]
    hidden_states: tuple[Tensor, ...]  # layers + 1 tensors of [B, L, H]
    padding_mask: Tensor  # [B, L] bool, True = real token
    sequence_output: Optional[Tensor] = None  # [B, L, H] what the heads read (fused); the last layer by default

    def __post_init__(self) -> None:
        if self.sequence_output is None:
            self.sequence_output = self.last_hidden_state


def attention_mask(input_ids: Tensor, causal: bool) -> Tensor:
    """``[B, 1, L, L]`` bool mask (True = may attend). Keys at PAD are hidden; with
    ``causal`` a position sees only itself and earlier ones. Every position may
    attend to itself, so no row is empty (PAD rows give ignored outputs)."""
    length = input_ids.shape[1]
    mask = (input_ids != PAD)[:, None, None, :].expand(-1, 1, length, -1)
    eye = torch.eye(length, dtype=torch.bool, device=input_ids.device)
    if causal:
        mask = mask & torch.tril(torch.ones(length, length, dtype=torch.bool, device=input_ids.device))
    return mask | eye


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.hidden // config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.out = nn.Linear(config.hidden, config.hidden)
        self.dropout = config.attention_dropout

    def forward(self, x: Tensor, mask: Tensor, prev_scores: Optional[Tensor] = None,
                keep_scores: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        b, l, h = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        scores = None
        if keep_scores or prev_scores is not None:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if prev_scores is not None:
                scores = scores + prev_scores
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            y = F.dropout(weights, p, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, l, h)), scores


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.attention = SelfAttention(config)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden, config.intermediate),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.intermediate, config.hidden),
        )
        self.norm1 = nn.LayerNorm(config.hidden)
        self.norm2 = nn.LayerNorm(config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        # alpha * frequency branch + (1 - alpha) * attention branch (BSARec); off at 0
        self.mix = config.filter_mix
        self.filter = FrequencyRescale(config.hidden, config.filter_window, config.dropout) if self.mix else None
        self.filter_causal = config.filter_causal

    def forward(self, x: Tensor, mask: Tensor, prev_scores: Optional[Tensor] = None,
                keep_scores: bool = False, real: Optional[Tensor] = None,
                causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """``real`` ``[B, L]`` (True = not PAD) and ``causal`` are read by the frequency
        branch only."""
        causal = causal or self.filter_causal  # only the frequency branch reads it below
        if self.pre_norm:
            n = self.norm1(x)
            a, scores = self.attention(n, mask, prev_scores, keep_scores)
            if self.filter is None:
                x = x + self.dropout(a)
            else:
                x = x + self.mix * self.filter.dropout(self.filter.delta(n, real, causal)) \
                    + (1 - self.mix) * self.dropout(a)
            x = x + self.dropout(self.ffn(self.norm2(x)))
        else:
            a, scores = self.attention(x, mask, prev_scores, keep_scores)
            if self.filter is None:
                x = self.norm1(x + self.dropout(a))
            else:
                x = self.mix * self.filter(x, real, causal) + (1 - self.mix) * self.norm1(x + self.dropout(a))
            x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, scores


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(config.hidden) if config.norm == "pre" else nn.Identity()

    def forward(self, x: Tensor, input_ids: Tensor, causal: bool) -> EncoderOutput:
        mask = attention_mask(input_ids, causal)
        states = [x]
        scores = None
        residual = self.config.residual_attention
        real = input_ids != PAD
        for i, layer in enumerate(self.layers):
            x, scores = layer(x, mask, scores if residual else None, keep_scores=residual, real=real, causal=causal)
            states.append(self.final_norm(x) if i == len(self.layers) - 1 else x)
        return EncoderOutput(states[-1], tuple(states), real)
