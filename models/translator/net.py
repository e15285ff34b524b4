"""The translator network (torch): a small transformer encoder over word pieces.

Each piece enters as the mean of its hashed n-gram embeddings, plus embeddings of its position
from the start and from the end of the name (the point type sits at the end, prefixes vary in
length) and of its part (name, description, unit, datatype). A [CLS] vector gathers the pieces
through two attention layers and gives both the class logits and a unit-length embedding that
the few-shot memory and the source-to-target matcher use. Written out by hand (no
nn.TransformerEncoder) so that the ONNX export is plain MatMul/Softmax that quantizes well.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gateway.translator.tokenize import BUCKETS


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.n1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.n2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.n1(x)).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h) + bias, dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.out(y))
        out: torch.Tensor = x + self.drop(self.ff(self.n2(x)))
        return out


class TranslatorNet(nn.Module):
    def __init__(
        self,
        n_classes: int,
        *,
        d_gram: int = 64,
        d: int = 128,
        layers: int = 2,
        heads: int = 4,
        ff: int = 256,
        max_pos: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.config = dict(d_gram=d_gram, d=d, layers=layers, heads=heads, ff=ff, max_pos=max_pos)
        self.grams = nn.Embedding(BUCKETS, d_gram, padding_idx=0)
        self.proj = nn.Linear(d_gram, d)
        self.pos = nn.Embedding(max_pos, d)
        self.rpos = nn.Embedding(max_pos, d)
        self.seg = nn.Embedding(5, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(Block(d, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)
        self.max_pos = max_pos
        nn.init.normal_(self.grams.weight, std=0.1)
        with torch.no_grad():
            self.grams.weight[0].zero_()

    def forward(
        self, ids: torch.Tensor, seg: torch.Tensor, pos: torch.Tensor, rpos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            # EmbeddingBag: same mean (padding excluded) without the (B, T, G, d) tensor.
            flat = nn.functional.embedding_bag(
                ids.reshape(-1, ids.shape[-1]), self.grams.weight, mode="mean", padding_idx=0
            )
            bag = flat.reshape(ids.shape[0], ids.shape[1], -1)
        else:  # plain Gather + ReduceSum for the ONNX export
            g = self.grams(ids).sum(2)
            bag = g / (ids > 0).sum(-1, keepdim=True).clamp(min=1).to(g.dtype)
        top = self.max_pos - 1
        x = (
            self.proj(bag)
            + self.pos(pos.clamp(max=top))
            + self.rpos(rpos.clamp(max=top))
            + self.seg(seg)
        )
        b = x.shape[0]
        x = torch.cat([self.cls.expand(b, 1, x.shape[2]), x], 1)
        keep = torch.cat([torch.ones_like(seg[:, :1]), seg], 1) > 0
        bias = (~keep).to(x.dtype)[:, None, None, :] * -1e4
        for blk in self.blocks:
            x = blk(x, bias)
        h = self.norm(x[:, 0])
        emb = h / h.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return self.head(h), emb
