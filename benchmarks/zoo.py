"""The model zoo that ``tests/test_zoo.py`` and ``benchmarks/zoo_table.py`` check libra_fx against.

Each entry builds a small random-weight model (reduced depth/width through timm kwargs, 32–64 px
inputs) and its example input. :func:`check` runs one entry through the four checks the zoo
asserts: forward bit-identical, FullGrad completeness in float64, the original model untouched,
and — where balance is impossible — an audit that names the op and a ``strict=True`` that raises.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import libra_fx
from libra_fx.auditing import default_target
from libra_fx.completeness import row_completeness_error
from libra_fx.grad_completeness import grad_completeness, randomise_bias_terms
from libra_fx.runner import fullgrad_terms


@dataclass(frozen=True)
class Entry:
    """One zoo architecture.

    Attributes:
        name: the row name (the timm architecture, or a description).
        build: ``() -> (model, example_input)``; the model is random-weight, in eval mode.
        family: what it exercises (window attention, GRN, ...).
        expect_unbalanced: op names the audit must report (balance impossible); empty = balanced.
        transform_kwargs: extra :func:`libra_fx.transform` arguments the model needs.
        note: why it needs them, or what the capture had to do.
    """

    name: str
    build: Callable[[], tuple[nn.Module, torch.Tensor]]
    family: str
    expect_unbalanced: tuple[str, ...] = ()
    transform_kwargs: dict = field(default_factory=dict)
    note: str = ""


def _reinit_head(model: nn.Module) -> nn.Module:
    """timm zero-inits classifier heads: without this every gradient is 0 and CE is trivially 0."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = head if isinstance(head, (tuple, list)) else (head,)  # distilled models: (head, head_dist)
    for module in (h for h in heads if isinstance(h, nn.Module)):
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(sub.weight, std=0.02)
                if sub.bias is not None:
                    nn.init.normal_(sub.bias, std=0.02)
    return model


def _randomise_norm_stats(model: nn.Module) -> nn.Module:
    """Give eval BatchNorms non-trivial running stats and affine params, so implied biases matter."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if module.weight is not None:
                module.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=generator))
                module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return model


class ImageOnly(nn.Module):
    """``model(x)`` only: hides optional forward arguments (Hiera's ``mask=None``) from the tracer,
    which would otherwise make them graph inputs and take the ``mask is not None`` branch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def timm_model(arch: str, size: int = 32, wrap: bool = False, **kwargs) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    """A builder for a random-weight timm model at ``size`` px (wrapped in :class:`ImageOnly` if asked)."""
    def build():
        import timm
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, num_classes=10, **kwargs)
        model = _randomise_norm_stats(_reinit_head(model)).eval()
        return (ImageOnly(model).eval() if wrap else model), torch.randn(2, 3, size, size)
    return build


# ----------------------------------------------------------------------------------------------
# non-timm models


def torchvision_vit() -> tuple[nn.Module, torch.Tensor]:
    """torchvision's ``vit_b_16`` architecture (``VisionTransformer``, nn.MultiheadAttention), shrunk."""
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval(), torch.randn(2, 3, 32, 32)


def torchvision_swin() -> tuple[nn.Module, torch.Tensor]:
    """torchvision's ``swin_t`` architecture (``SwinTransformer``, shifted windows), shrunk."""
    from torchvision.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                            window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=10)
    nn.init.normal_(model.head.weight, std=0.02)
    return model.eval(), torch.randn(2, 3, 32, 32)


class _EncoderClassifier(nn.Module):
    """``nn.TransformerEncoder`` (batch_first, GELU, norm_first, float causal mask), then a head.

    Three heads: an odd head count keeps PyTorch off its fused eval/``no_grad`` encoder fast path,
    whose values differ in the last bits from the composite ops any capture records (export
    captures the grad-mode path), so no rewritten graph could be bit-identical to that path.
    """

    def __init__(self, dim: int = 24, heads: int = 3, layers: int = 2, classes: int = 10):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pos_embed = nn.Parameter(torch.randn(1, 8, dim) * 0.02)
        self.head = nn.Linear(dim, classes)
        self.register_buffer("mask", torch.full((8, 8), float("-inf")).triu(1), persistent=False)

    def forward(self, x):
        return self.head(self.encoder(x + self.pos_embed, mask=self.mask, is_causal=True).mean(1))


def transformer_encoder() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _EncoderClassifier().eval(), torch.randn(2, 8, 24)


def frozen_transformer_encoder() -> tuple[nn.Module, torch.Tensor]:
    """The usual attribution set-up: every parameter frozen. Four heads make the layers eligible for
    PyTorch's fused fast path, which eager takes when nothing asks for gradient."""
    torch.manual_seed(0)
    model = _EncoderClassifier(heads=4).eval().requires_grad_(False)
    return model, torch.randn(2, 8, 24)


def metaformer_star_relu() -> tuple[nn.Module, torch.Tensor]:
    """A ConvFormer-style MetaFormer: separable-conv mixers and StarReLU ``s·relu(x)² + b`` MLPs."""
    from timm.models.metaformer import MetaFormer, SepConv
    torch.manual_seed(0)
    model = MetaFormer(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), token_mixers=SepConv, num_classes=10)
    return _reinit_head(model).eval(), torch.randn(2, 3, 32, 32)


class ContrastiveClip(nn.Module):
    """CLIP's image-to-text logits ``s·norm(img)·norm(txt)ᵀ``, attributed to the pixels *and* the
    text's token embeddings: row i's score depends on another row's text, so completeness cannot
    be read row by row (each row needs its own backward)."""

    def __init__(self, clip: nn.Module, text: torch.Tensor):
        super().__init__()
        self.clip = clip
        self.register_buffer("text", text)  # token ids: only for pooling at the end-of-text token

    def encode_text(self, token_embeddings):
        clip = self.clip
        x = clip.transformer(token_embeddings + clip.positional_embedding, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)[torch.arange(x.shape[0]), self.text.argmax(dim=-1)]
        return x @ clip.text_projection

    def forward(self, image, token_embeddings):
        image_embedding = F.normalize(self.clip.encode_image(image), dim=-1)
        text_embedding = F.normalize(self.encode_text(token_embeddings), dim=-1)
        return self.clip.logit_scale.exp() * image_embedding @ text_embedding.T


def open_clip_contrastive() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """open_clip ViT-B-32 (one block per tower, 64 px, 16 text tokens), nn.MultiheadAttention in both."""
    import open_clip
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, force_image_size=64)
    clip.visual.transformer.resblocks = clip.visual.transformer.resblocks[:1]
    clip.transformer.resblocks = clip.transformer.resblocks[:1]
    clip.positional_embedding = nn.Parameter(clip.positional_embedding[:16].detach().clone())
    clip.attn_mask = clip.attn_mask[:16, :16]
    text = torch.randint(1, 1000, (2, 16))
    embeddings = clip.token_embedding(text).detach()
    return ContrastiveClip(clip, text).eval(), (torch.randn(2, 3, 64, 64), embeddings)


class RMSNorm(nn.Module):
    """Hand-written RMSNorm (no ``F.rms_norm``): ``x·rsqrt(mean x² + ε)·w``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (rotate-half form)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaBlock(nn.Module):
    """A hand-written LLaMA block: RMSNorm, RoPE, causal explicit-softmax attention, SwiGLU."""

    def __init__(self, dim: int = 32, heads: int = 4, seq: int = 8):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.w1 = nn.Parameter(torch.randn(dim, 2 * dim) / math.sqrt(dim))
        self.w3 = nn.Parameter(torch.randn(dim, 2 * dim) / math.sqrt(dim))
        self.w2 = nn.Linear(2 * dim, dim, bias=False)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        angles = torch.outer(torch.arange(seq).float(), inv_freq)
        angles = torch.cat((angles, angles), -1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        mask = torch.full((seq, seq), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def _split(self, t):
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def attention(self, x):
        q, k, v = self._split(self.wq(x)), self._split(self.wk(x)), self._split(self.wv(x))
        q, k = rope(q, self.cos, self.sin), rope(k, self.cos, self.sin)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + self.mask
        out = torch.softmax(scores, dim=-1) @ v
        b, h, n, d = out.shape
        return self.wo(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        h = self.norm2(x)
        return x + self.w2(F.silu(h @ self.w1) * (h @ self.w3))


class LlamaLM(nn.Module):
    """Embedding-free LLaMA-style model: two blocks, final RMSNorm, a vocabulary head."""

    def __init__(self, dim: int = 32, vocab: int = 10):
        super().__init__()
        self.blocks = nn.Sequential(LlamaBlock(dim), LlamaBlock(dim))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, x):
        return self.head(self.norm(self.blocks(x))[:, -1])


def llama() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return LlamaLM().eval(), torch.randn(2, 8, 32)


# ----------------------------------------------------------------------------------------------
# the zoo


_SMALL_VIT = dict(depth=2, embed_dim=32, num_heads=2)

#: Weight standardisation calls ``F.batch_norm(weight, None, None, training=True)`` on a parameter;
#: the transform's eval-graph rewrite (``eval_mode=True``) flips that to ``training=False``, which
#: fails without running stats (reported to the transform's owner). The models are already in eval
#: mode, so the zoo keeps the graph's batch-norm modes as they are.
_KEEP_BN_MODE = {"eval_mode": False}
_WS_NOTE = "eval_mode=False: weight standardisation is a training-mode batch_norm on the weight"

ZOO: tuple[Entry, ...] = (
    Entry("swin_tiny_patch4_window7_224", timm_model(
        "swin_tiny_patch4_window7_224", 32, img_size=32, window_size=4, embed_dim=16,
        depths=(2, 2), num_heads=(1, 2)), "window attention, relative-position bias"),
    Entry("beit_base_patch16_224", timm_model("beit_base_patch16_224", 32, img_size=32, **_SMALL_VIT),
          "relative-position attention"),
    Entry("coat_lite_tiny", timm_model("coat_lite_tiny", 32, img_size=32),
          "factorised conv-attention, conv position encoding"),
    Entry("maxvit_rmlp_nano_rw_256", timm_model("maxvit_rmlp_nano_rw_256", 64, img_size=64),
          "block+grid attention, MBConv, relative-position MLP"),
    Entry("coatnet_nano_rw_224", timm_model("coatnet_nano_rw_224", 64, img_size=64),
          "conv-attention hybrid, relative-position bias"),
    Entry("xcit_nano_12_p16_224", timm_model("xcit_nano_12_p16_224", 32, img_size=32, depth=2),
          "cross-covariance attention (L2-normalised q, k), class attention, LPI"),
    Entry("cait_xxs24_224", timm_model("cait_xxs24_224", 32, img_size=32, depth=2, depth_token_only=1),
          "class attention, talking heads"),
    Entry("levit_128s", timm_model("levit_128s", 64, img_size=64),
          "conv-attention hybrid, BN linear, hard-swish, attention biases"),
    Entry("efficientformer_l1", timm_model("efficientformer_l1", 224, depths=(1, 1, 1, 1)),
          "pooling mixer + attention, BN"),
    Entry("poolformer_s12", timm_model("poolformer_s12", 32), "pooling token mixer, GroupNorm(1)"),
    Entry("convit_tiny", timm_model("convit_tiny", 32, img_size=32, depth=2, local_up_to_layer=1),
          "gated positional self-attention",
          note="GPSA rebuilds its position indices when N changes: kept whole by symbolic tracing, "
               "captured by torch.export instead"),
    Entry("convnextv2_atto", timm_model("convnextv2_atto", 32), "GRN, LayerNorm2d"),
    Entry("resnetv2_50x1_bit", timm_model("resnetv2_50x1_bit", 32), "GroupNorm, weight-standardised conv",
          transform_kwargs=_KEEP_BN_MODE, note=_WS_NOTE),
    Entry("nf_resnet26", timm_model("nf_resnet26", 32, act_layer="silu", attn_layer="se"),
          "normaliser-free, scaled std conv, SiLU, SE",
          transform_kwargs=_KEEP_BN_MODE, note=_WS_NOTE),
    Entry("mobilenetv3_small_050", timm_model("mobilenetv3_small_050", 32),
          "BatchNorm, hard-swish, SE with hard-sigmoid gate"),
    Entry("hiera_tiny_224", timm_model("hiera_tiny_224", 64, wrap=True, img_size=64),
          "hierarchical mask-unit attention", note="wrapped so the optional mask is not a graph input"),
    Entry("twins_svt_small", timm_model("twins_svt_small", 32, img_size=32, depths=(1, 1, 1, 1)),
          "locally-grouped + global sub-sampled attention",
          note="LocallyGroupedAttn pads by an amount computed from the traced size: kept whole by "
               "symbolic tracing, captured by torch.export instead"),
    Entry("twins_pcpvt_small", timm_model("twins_pcpvt_small", 32, img_size=32, depths=(1, 1, 1, 1)),
          "conditional position encoding, spatial-reduction attention"),
    Entry("tiny_vit_5m_224", timm_model("tiny_vit_5m_224", 224), "window attention, conv MBConv",
          note="fixed 224 px resolution"),
    Entry("mobilevitv2_050", timm_model("mobilevitv2_050", 64), "separable (linear) self-attention",
          note="MobileVitV2Block calls math.ceil on the traced height: symbolic tracing keeps it whole, "
               "so the torch.export capture (which enters it) is used"),
    Entry("deit_tiny_distilled_patch16_224", timm_model(
        "deit_tiny_distilled_patch16_224", 32, img_size=32, depth=2), "distillation token"),
    Entry("torchvision_vit_b_16", torchvision_vit, "nn.MultiheadAttention, torchvision"),
    Entry("torchvision_swin_t", torchvision_swin, "shifted windows, torchvision fx-wrapped attention",
          note="torchvision wraps shifted_window_attention with torch.fx.wrap: opaque to symbolic "
               "tracing, so the torch.export capture (which enters it) is kept"),
    Entry("nn.TransformerEncoder", transformer_encoder, "nn.MultiheadAttention, batch_first"),
    Entry("nn.TransformerEncoder (frozen)", frozen_transformer_encoder,
          "every parameter requires_grad=False (fast-path eligible)"),
    Entry("metaformer_starrelu", metaformer_star_relu, "StarReLU s·relu(x)²+b, separable conv mixer"),
    Entry("open_clip ViT-B-32 (contrastive)", open_clip_contrastive,
          "image-text logits mixing batch rows, nn.MultiheadAttention in both towers"),
    Entry("llama_block", llama, "hand-written RMSNorm, RoPE, causal softmax, SwiGLU"),
)

BY_NAME = {entry.name: entry for entry in ZOO}


# ----------------------------------------------------------------------------------------------
# checks


@dataclass
class Result:
    """What :func:`check` measured for one entry."""

    name: str
    capture: str = ""
    forward_equal: bool = False
    ce_before: float = math.nan
    ce_after: float = math.nan
    grad_ce_before: float = math.nan
    grad_ce_after: float = math.nan
    own_vs_grad: float = math.nan
    transform_s: float = math.nan
    counts: dict = field(default_factory=dict)
    unbalanced: list = field(default_factory=list)
    untouched: bool = False


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _clear_eval_caches(model: nn.Module) -> None:
    # timm's LeViT/EfficientFormer cache gathered attention biases in eval mode *with* their autograd
    # graph, so a second backward through the plain model fails; start each pass afresh.
    for module in model.modules():
        cache = getattr(module, "attention_bias_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def _as_inputs(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _requiring_grad(inputs: tuple) -> tuple:
    return tuple(t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs)


def _input_grad(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    _clear_eval_caches(model)
    inputs = _requiring_grad(inputs)
    default_target(model(*inputs)).sum().backward()
    model.zero_grad(set_to_none=True)
    return [t.grad for t in inputs if t.requires_grad]


def _same_forward(gm: nn.Module, model: nn.Module, inputs: tuple) -> bool:
    """Forward values as attribution runs them: grad mode on, inputs asking for gradient (a frozen
    nn.TransformerEncoder takes a fused kernel under ``no_grad`` that no captured graph records)."""
    with torch.enable_grad():
        return torch.equal(gm(*_requiring_grad(inputs)), model(*_requiring_grad(inputs)))


def _own_vs_grad(gm, inputs: tuple, independent) -> float:
    """|libra_fx's residual − the ``.grad`` residual| / Σ|f|: do the two decompositions agree?"""
    terms = fullgrad_terms(gm, inputs, default_target)
    own = float((terms.score - terms.total).sum())
    return abs(own - independent.residual) / max(independent.scale, 1e-12)


def check(entry: Entry, dtype: torch.dtype = torch.float64) -> Result:
    """Transform ``entry``'s model (in ``dtype``) and measure everything the zoo asserts."""
    model, x = entry.build()
    model, inputs = randomise_bias_terms(model.to(dtype)), tuple(t.to(dtype) if t.is_floating_point() else t
                                                             for t in _as_inputs(x))
    result = Result(entry.name)
    state, grad_before = _snapshot(model), _input_grad(model, inputs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = libra_fx.transform(model, inputs, **entry.transform_kwargs)
    result.transform_s = time.perf_counter() - start
    report = gm.libra_report
    result.capture = report.traced.meta.get("libra_capture", "")
    result.counts, result.unbalanced = report.counts(), list(report.unbalanced)
    result.forward_equal = _same_forward(gm, model, inputs)
    result.ce_before = row_completeness_error(report.traced, inputs, default_target).max().item()
    result.ce_after = row_completeness_error(gm, inputs, default_target).max().item()
    independent = grad_completeness(gm, inputs, default_target, model=model)
    result.grad_ce_before = grad_completeness(report.traced, inputs, default_target, model=model).error
    result.grad_ce_after = independent.error
    result.own_vs_grad = _own_vs_grad(gm, inputs, independent)
    after = _snapshot(model)
    result.untouched = (state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
                        and all(torch.equal(a, b) for a, b in zip(grad_before, _input_grad(model, inputs))))
    return result
