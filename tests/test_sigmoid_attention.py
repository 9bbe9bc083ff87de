"""The README's custom-pass example: one's own pass, then every built-in one."""
from __future__ import annotations

import torch
import torch.nn as nn

import libra_fx
import passes

from .sigmoid_attention import PASS as SIGMOID_ATTENTION


class SigmoidAttention(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = torch.sigmoid(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5)
        return self.proj(weights @ v).mean(1)


def test_sigmoid_attention_pass():
    model, x = SigmoidAttention().eval(), torch.randn(2, 5, 8)
    gm = libra_fx.transform(model, x, passes=[SIGMOID_ATTENTION, *passes.REGISTRY], strict=True)
    assert gm.libra_report.counts() == {"sigmoid_attention": 1}
    assert torch.equal(gm(x), model(x))  # the forward is unchanged
    assert libra_fx.completeness_error(gm, (x,), 0).max() < 1e-5  # FullGrad-complete
