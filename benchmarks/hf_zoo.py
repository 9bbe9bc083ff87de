"""A zoo of Hugging Face ``transformers`` architectures, built from tiny configs, for libra_fx.

Every entry builds a random-weight model from a config (nothing is downloaded), wraps it in a small
module whose input is what gets attributed — ``inputs_embeds`` for text models (with a fixed,
padded ``attention_mask`` held as a buffer), ``pixel_values`` for vision models — and whose output
is the ``(B, C)`` logits being explained. :func:`check` transforms it (in float64, so the check is
about the maths and not round-off) and measures forward identity, completeness before and after,
both the independent way (:func:`libra_fx.grad_completeness.grad_completeness`, per sample, only ``.grad``) and libra_fx's way
(:func:`libra_fx.completeness_error`), rewrites, what the audit names, and the transform time.

Shared with ``benchmarks/hf_zoo_table.py`` and ``tests/test_hf_zoo.py``.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

import libra_fx
from libra_fx.auditing import default_target
from libra_fx.grad_completeness import GradCompleteness, grad_completeness, randomise_bias_terms
from benchmarks.zoo import Entry, Result, _snapshot

BATCH, SEQ, HIDDEN = 2, 8, 32

# ----------------------------------------------------------------------------------------------
# wrappers: the attributed input in, the explained logits out


def padding_mask() -> torch.Tensor:
    """A (BATCH, SEQ) attention mask whose second row ends in 3 padded positions.

    Returns:
        A long tensor of 0/1.

    Example:
        >>> padding_mask()[1].tolist()
        [1, 1, 1, 1, 1, 0, 0, 0]

    Right padding: with left padding every padded query of a causal model sees only masked keys,
    and Hugging Face's eager attention (``softmax(scores, dtype=float32)``) turns float64's
    ``finfo.min`` into ``-inf`` there, so a float64 model gives NaN rows (its own forward, before
    any transform).
    """
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, -3:] = 0
    return mask


class LastTokenLogits(nn.Module):
    """A causal LM on ``inputs_embeds`` (padding mask held as a buffer): next-token logits.

    Each row's logits at its last real position (the mask's last 1), the position generation
    would read.
    """

    def __init__(self, model: nn.Module, mask: Optional[torch.Tensor]):
        super().__init__()
        self.model = model
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("last", (mask.sum(1) - 1).view(-1, 1, 1), persistent=False)

    def forward(self, embeds):
        logits = self.model(inputs_embeds=embeds, attention_mask=self.mask, use_cache=False).logits
        # gather, not logits[arange(B), last]: that advanced index is aten.index, an op libra_fx
        # does not know yet (see the report)
        return logits.gather(1, self.last.expand(-1, 1, logits.shape[-1])).squeeze(1)


class SequenceLogits(nn.Module):
    """An encoder classifier on ``inputs_embeds`` (padding mask as a buffer): its ``(B, C)`` logits."""

    def __init__(self, model: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, embeds):
        return self.model(inputs_embeds=embeds, attention_mask=self.mask).logits


class Seq2SeqLogits(nn.Module):
    """T5 on encoder and decoder ``inputs_embeds`` (both attributed): the last decoder position's logits."""

    def __init__(self, model: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, embeds, decoder_embeds):
        return self.model(inputs_embeds=embeds, attention_mask=self.mask, decoder_inputs_embeds=decoder_embeds,
                          use_cache=False).logits[:, -1]


class ImageLogits(nn.Module):
    """An image classifier on ``pixel_values``: its logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return self.model(pixel_values=pixels).logits


class ZeroShotLogits(nn.Module):
    """CLIP/SigLIP zero-shot: image features against fixed text embeddings (a buffer, computed once).

    ``scale · cos(image, text) (+ SigLIP's logit bias)``: the contrastive logit the paper explains,
    with only the vision tower (and the logit scale/bias) in the graph.
    """

    def __init__(self, model: nn.Module, text_embeds: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("text", text_embeds / text_embeds.norm(dim=-1, keepdim=True), persistent=False)

    def forward(self, pixels):
        image = self.model.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image)  # transformers 5 returns a ModelOutput here
        logits = image / image.norm(dim=-1, keepdim=True) @ self.text.t() * self.model.logit_scale.exp()
        bias = getattr(self.model, "logit_bias", None)
        return logits if bias is None else logits + bias


# ----------------------------------------------------------------------------------------------
# builders


def _config(model_type: str, **kwargs):
    from transformers import AutoConfig
    return AutoConfig.for_model(model_type, **kwargs)


def _from_config(auto_class: str, config, attn: Optional[str], **extra) -> nn.Module:
    import transformers
    torch.manual_seed(0)
    extra.update({} if attn is None else {"attn_implementation": attn})
    # Hugging Face initialises biases to 0, and b·b.grad = 0 whatever b.grad is: the check would not see them
    return randomise_bias_terms(getattr(transformers, auto_class).from_config(config, **extra), std=0.1, seed=3).eval()


def _embeds(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


#: a Llama-sized decoder, shrunk: GQA (4 query heads over 2 key/value heads), head_dim 8
_DECODER = dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, vocab_size=64, max_position_embeddings=64)


def causal_lm(model_type: str, attn: Optional[str] = "sdpa", hidden: int = HIDDEN, **kwargs):
    """A builder for a random-weight causal LM (padded batch), explaining the next-token logit.

    Args:
        model_type: a ``transformers`` model type (``"llama"``, ``"gpt2"``, ...).
        attn: ``attn_implementation`` (``None`` for models without attention, e.g. Mamba).
        hidden: the embedding width (the config's hidden size).
        **kwargs: the config.

    Returns:
        ``build() -> (LastTokenLogits, embeds)``.

    Example:
        >>> model, embeds = causal_lm("llama", **_DECODER)()
        >>> model(embeds).shape
        torch.Size([2, 64])
    """
    def build():
        model = _from_config("AutoModelForCausalLM", _config(model_type, **kwargs), attn)
        return LastTokenLogits(model, padding_mask()).eval(), _embeds(BATCH, SEQ, hidden)
    return build


def encoder(model_type: str, attn: Optional[str] = "sdpa", hidden: int = HIDDEN, **kwargs):
    """A builder for a random-weight sequence classifier (padded batch), explaining a class logit.

    Args:
        model_type: a ``transformers`` encoder type (``"bert"``, ``"modernbert"``, ...).
        attn: ``attn_implementation``.
        hidden: the embedding width.
        **kwargs: the config (3 labels are added).

    Returns:
        ``build() -> (SequenceLogits, embeds)``.

    Example:
        >>> model, embeds = encoder("bert", **_ENC)()
        >>> model(embeds).shape
        torch.Size([2, 3])
    """
    def build():
        config = _config(model_type, num_labels=3, **kwargs)
        model = _from_config("AutoModelForSequenceClassification", config, attn)
        return SequenceLogits(model, padding_mask()).eval(), _embeds(BATCH, SEQ, hidden)
    return build


def t5(attn: Optional[str] = "eager"):
    """A builder for T5 (relative-position bias, RMSNorm, ReLU MLP); both embeddings are attributed.

    Args:
        attn: ``attn_implementation``.

    Returns:
        ``build() -> (Seq2SeqLogits, (encoder_embeds, decoder_embeds))``.

    Example:
        >>> model, inputs = t5()()
        >>> model(*inputs).shape
        torch.Size([2, 64])
    """
    def build():
        config = _config("t5", d_model=HIDDEN, d_kv=8, d_ff=2 * HIDDEN, num_layers=1, num_decoder_layers=1,
                         num_heads=4, vocab_size=64, relative_attention_num_buckets=8)
        model = _from_config("AutoModelForSeq2SeqLM", config, attn)
        inputs = (_embeds(BATCH, SEQ, HIDDEN), _embeds(BATCH, SEQ // 2, HIDDEN) * 0.5)
        return Seq2SeqLogits(model, padding_mask()).eval(), inputs
    return build


def vit(attn: str = "sdpa"):
    """A builder for transformers' ViT classifier at 32 px (patch 8).

    Args:
        attn: ``attn_implementation``.

    Returns:
        ``build() -> (ImageLogits, pixels)``.

    Example:
        >>> model, pixels = vit()()
        >>> model(pixels).shape
        torch.Size([2, 10])
    """
    def build():
        config = _config("vit", image_size=32, patch_size=8, hidden_size=HIDDEN, num_hidden_layers=1,
                         num_attention_heads=4, intermediate_size=2 * HIDDEN, num_labels=10)
        model = _from_config("AutoModelForImageClassification", config, attn)
        return ImageLogits(model).eval(), _embeds(BATCH, 3, 32, 32)
    return build


def _tower(**extra) -> dict:
    return dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1, num_attention_heads=4,
                **extra)


def zero_shot(model_type: str, attn: str = "sdpa"):
    """A builder for CLIP or SigLIP at 32 px: the zero-shot logit against 3 fixed random prompts.

    Args:
        model_type: ``"clip"`` or ``"siglip"``.
        attn: ``attn_implementation``.

    Returns:
        ``build() -> (ZeroShotLogits, pixels)``.

    Example:
        >>> model, pixels = zero_shot("clip")()
        >>> model(pixels).shape
        torch.Size([2, 3])
    """
    def build():
        config = _config(model_type, projection_dim=HIDDEN,
                         text_config=_tower(vocab_size=64, max_position_embeddings=SEQ),
                         vision_config=_tower(image_size=32, patch_size=8))
        model = _from_config("AutoModel", config, attn)
        ids = torch.randint(0, 64, (3, SEQ), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            text = model.get_text_features(input_ids=ids)
        text = getattr(text, "pooler_output", text)
        return ZeroShotLogits(model, text).eval(), _embeds(BATCH, 3, 32, 32)
    return build


# ----------------------------------------------------------------------------------------------
# the zoo


@dataclass(frozen=True)
class HFEntry(Entry):
    """One Hugging Face architecture (see :class:`benchmarks.zoo.Entry` for the shared fields).

    Attributes:
        attn: the ``attn_implementation`` the model was built with (``""``: it has no attention).
        defect: non-empty when the entry fails today because of a known libra_fx defect: the cause
            (tests mark it ``xfail(strict=True)`` so it flips once fixed).
        dtype: the dtype of the check (float64 unless the model cannot run in it).
    """

    attn: str = ""
    defect: str = ""
    dtype: torch.dtype = torch.float64


def _entry(name: str, build, family: str, attn: str = "sdpa", **kwargs) -> HFEntry:
    return HFEntry(name, build, family, attn=attn, **kwargs)


_ENC = dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1, num_attention_heads=4,
            vocab_size=64, max_position_embeddings=64)
_SLIDING = dict(sliding_window=4)  # < SEQ, so the window masks something


def _lm(model_type: str, family: str, attn: str = "sdpa", entry: Optional[dict] = None, **kwargs) -> HFEntry:
    config = {**_DECODER, **kwargs}
    return _entry(model_type, causal_lm(model_type, attn, **config), family, attn, **(entry or {}))


_FP32 = {"dtype": torch.float32, "note": "float32: grouped_mm has no float64 CPU kernel"}
_GPT2 = dict(n_embd=HIDDEN, n_layer=1, n_head=4, vocab_size=64, n_positions=64)

HF_ZOO: tuple[HFEntry, ...] = (
    _lm("llama", "RMSNorm, RoPE, GQA, SwiGLU"),
    _lm("llama", "RMSNorm, RoPE, GQA, SwiGLU", attn="eager"),
    _lm("qwen2", "q/k/v biases, GQA"),
    _lm("qwen2", "q/k/v biases, GQA", attn="eager"),
    _lm("qwen3", "q/k RMSNorm, GQA"),
    _lm("mistral", "sliding window 4 < sequence 8", **_SLIDING),
    _lm("mistral", "sliding window 4 < sequence 8", attn="eager", **_SLIDING),
    _lm("gemma", "GeGLU (tanh GELU), (1+w) RMSNorm, scaled embeddings"),
    _lm("gemma2", "attention + final-logit soft-capping (tanh), sliding window", attn="eager",
        num_hidden_layers=2, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        query_pre_attn_scalar=8, **_SLIDING),
    _lm("gemma3_text", "q/k norm, local/global layers", num_hidden_layers=2,
        query_pre_attn_scalar=8, layer_types=["sliding_attention", "full_attention"], **_SLIDING),
    _lm("phi", "partial RoPE, parallel block, gelu_new, LayerNorm", 
        partial_rotary_factor=0.5),
    _lm("phi3", "fused qkv, fused gate/up SwiGLU", pad_token_id=0),
    _entry("gpt2", causal_lm("gpt2", "sdpa", **_GPT2), "Conv1D, learned positions, gelu_new"),
    _entry("gpt2", causal_lm("gpt2", "eager", **_GPT2), "Conv1D, learned positions, gelu_new", "eager"),
    _lm("gpt_neox", "partial RoPE, parallel residual", rotary_pct=0.25),
    _lm("opt", "learned positions (offset 2), ReLU", ffn_dim=2 * HIDDEN, word_embed_proj_dim=HIDDEN),
    _entry("falcon", causal_lm("falcon", "sdpa", hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=4,
                               vocab_size=64, new_decoder_architecture=False, multi_query=True),
           "multi-query attention, parallel block"),
    _lm("olmo", "non-parametric LayerNorm"),
    _lm("mixtral", "sparse MoE (top-2 of 4 experts)", entry=_FP32, num_local_experts=4,
        num_experts_per_tok=2),
    _lm("qwen2_moe", "MoE + shared expert (sigmoid gate)", entry=_FP32, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=HIDDEN, shared_expert_intermediate_size=HIDDEN,
        decoder_sparse_step=1),
    _entry("mamba", causal_lm("mamba", None, hidden_size=HIDDEN, state_size=8, num_hidden_layers=1, vocab_size=64,
                              expand=2, conv_kernel=4),
           "selective state space (no attention)", attn="", expect_unbalanced=("exp", "softplus")),
    _entry("bert", encoder("bert", **_ENC), "post-LN encoder, learned positions, tanh pooler"),
    _entry("bert", encoder("bert", "eager", **_ENC), "post-LN encoder, learned positions, tanh pooler", "eager"),
    _entry("roberta", encoder("roberta", **_ENC), "padding-offset positions, tanh head"),
    _entry("distilbert", encoder("distilbert", dim=HIDDEN, hidden_dim=2 * HIDDEN, n_layers=1, n_heads=4,
                                 vocab_size=64, max_position_embeddings=64), "learned positions, GELU"),
    _entry("modernbert", encoder("modernbert", num_hidden_layers=2, global_attn_every_n_layers=2,
                                 local_attention=4, pad_token_id=0,
                                 **{k: v for k, v in _ENC.items() if k != "num_hidden_layers"}),
           "RoPE, GeGLU, bias-free LayerNorm, local/global attention"),
    _entry("t5", t5("eager"), "encoder-decoder, relative-position bias, RMSNorm, ReLU", "eager",
           note="float32 is tested too: there `x.to(float32)` is a no-op cast that export records as the "
                "base of x·rsqrt(·) (tests/test_hf_zoo.py::test_hf_zoo_float32)"),
    _entry("vit", vit(), "ViT image classifier, class token"),
    _entry("clip", zero_shot("clip"), "zero-shot logit, QuickGELU, L2-normalised features"),
    _entry("siglip", zero_shot("siglip"), "MAP-head pooling (nn.MultiheadAttention), logit bias"),
)

BY_KEY = {(entry.name, entry.attn): entry for entry in HF_ZOO}


# ----------------------------------------------------------------------------------------------
# checks


@dataclass
class HFResult(Result):
    """What :func:`check` measured (see :class:`benchmarks.zoo.Result`; its ``ce_before``/``ce_after``
    are libra_fx's own :func:`~libra_fx.runner.fullgrad_terms` numbers).

    Attributes:
        attn: the entry's attention implementation.
        ce_before_grad: completeness error of the plain model, from ``.grad`` (:func:`grad_completeness`).
        ce_after_grad: the same for the transformed module.
        rewrites: nodes rewritten, all passes together.
        error: ``"ExceptionType: message"`` when the transform (or the model itself) raised.
    """

    attn: str = ""
    ce_before_grad: float = math.nan
    ce_after_grad: float = math.nan
    rewrites: int = 0
    error: str = ""


def model_and_inputs(entry: HFEntry, dtype: torch.dtype) -> tuple[nn.Module, tuple]:
    """The entry's model and its inputs as a tuple, both in ``dtype``."""
    model, x = entry.build()
    x = x if isinstance(x, tuple) else (x,)
    return model.to(dtype), tuple(t.to(dtype) for t in x)


def _grad_check(module: nn.Module, x: tuple) -> GradCompleteness:
    return grad_completeness(module, x, default_target, per_sample=True)


def _same_terms(a: GradCompleteness, b: GradCompleteness) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("score", "input_term", "bias_term"))


def _measure(result: HFResult, model: nn.Module, x: tuple, entry: HFEntry) -> None:
    state, plain = _snapshot(model), _grad_check(model, x)
    result.ce_before_grad = plain.error.max().item()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = libra_fx.transform(model, x, **entry.transform_kwargs)
    result.transform_s = time.perf_counter() - start
    report = gm.libra_report
    result.capture = report.traced.meta.get("libra_capture", "")
    result.counts, result.unbalanced = report.counts(), list(report.unbalanced)
    result.rewrites = sum(result.counts.values())
    with torch.no_grad():
        result.forward_equal = torch.equal(gm(*x), model(*x))
    result.ce_before = libra_fx.fullgrad_terms(report.traced, x, default_target).completeness_error.max().item()
    result.ce_after = libra_fx.completeness_error(gm, x, default_target).max().item()
    result.ce_after_grad = _grad_check(gm, x).error.max().item()
    after = _snapshot(model)
    result.untouched = (state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
                        and _same_terms(plain, _grad_check(model, x)))


def check(entry: HFEntry, dtype: Optional[torch.dtype] = None) -> HFResult:
    """Transform ``entry``'s model and measure everything the zoo reports.

    Args:
        entry: a :data:`HF_ZOO` entry.
        dtype: the dtype to run in (the entry's own, float64 unless it says otherwise, by default).

    Returns:
        :class:`HFResult`; an exception from the transform is caught and recorded in ``error``.

    Example:
        >>> result = check(BY_KEY[("bert", "sdpa")])
        >>> result.forward_equal and result.ce_after_grad < 1e-5
        True
    """
    result = HFResult(entry.name, attn=entry.attn)
    model, x = model_and_inputs(entry, dtype or entry.dtype)
    try:
        _measure(result, model, x, entry)
    except Exception as exc:  # the table shows the failure; the tests mark known ones xfail
        first = (str(exc).strip().splitlines() or [""])[0]
        result.error = f"{type(exc).__name__}: {first}"
    return result
