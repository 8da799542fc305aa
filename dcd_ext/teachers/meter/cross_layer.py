"""METER's co-attention layer (``BertCrossLayer`` in the official ``bert_model.py``) and pooler.

Post-LN BERT structure: self-attention -> add & LayerNorm; cross-attention (queries from this
stream, keys/values from the other stream, masked with the *other* stream's mask) -> add &
LayerNorm; erf-GELU feed-forward -> add & LayerNorm. Parameter names match the official ones
(``attention.self.query``, ``crossattention.output.LayerNorm``, ``intermediate.dense``, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BertCrossLayer", "Pooler"]


class _QKV(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _AddNorm(nn.Module):
    def __init__(self, in_features: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float, dropout: float, eager: bool):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.eager = eager
        self.self = _QKV(hidden)
        self.output = _AddNorm(hidden, hidden, eps, dropout)

    def forward(self, x: Tensor, context: Tensor, context_keep: Tensor) -> Tensor:
        """``context_keep`` [B, Lk] bool: True where a key may be attended to."""
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(batch, -1, self.heads, head_dim).transpose(1, 2)

        q = split(self.self.query(x))
        k = split(self.self.key(context))
        v = split(self.self.value(context))
        keep = context_keep[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        if self.eager:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            ctx = F.dropout(scores.softmax(dim=-1), dropout, self.training) @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        ctx = ctx.transpose(1, 2).reshape(batch, length, hidden)
        return self.output(ctx, x)


class BertCrossLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float = 1e-12, dropout: float = 0.0,
                 eager: bool = False):
        super().__init__()
        self.attention = _Attention(hidden, heads, eps, dropout, eager)
        self.crossattention = _Attention(hidden, heads, eps, dropout, eager)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(hidden, intermediate)
        self.output = _AddNorm(intermediate, hidden, eps, dropout)

    def forward(self, x: Tensor, other: Tensor, x_keep: Tensor, other_keep: Tensor) -> Tensor:
        x = self.attention(x, x, x_keep)
        x = self.crossattention(x, other, other_keep)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class Pooler(nn.Module):
    """tanh(dense(first token))."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x[:, 0]).tanh()
