"""Every gradient of the balanced graph is the balanced one (issue 11): parameters included, read
from ``.grad`` as a user reads them. One regression test per defect found; each failed before its fix.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import libra_fx
from benchmarks.zoo import BY_NAME, check
from libra_fx.completeness import row_completeness_error
from libra_fx.grad_completeness import grad_completeness, is_additive, randomise_bias_terms
from libra_fx.ops import scale_grad
from libra_fx.pipeline import apply_passes
from libra_fx.runner import fullgrad_terms
from libra_fx.validation import check_passes

from .archgen import StarReLU, gelu_new


def _transform(model, inputs, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return libra_fx.transform(model, inputs, **kwargs)


def _grads(module, x, target=lambda out: out[:, 0]) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    target(module(x.clone().requires_grad_(True))).sum().backward()
    return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------------------------
# 1. attention scores get no gradient: inputs, q/k projections, learned queries, score masks


def test_multihead_attention_q_k_projections_get_no_gradient():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    nn.init.normal_(mha.in_proj_bias, std=0.1)
    model = _MHAModel(mha).eval()
    x = torch.randn(2, 5, 8)
    grads = _grads(_transform(model, x), x)
    weight, bias = grads["mha.in_proj_weight"], grads["mha.in_proj_bias"]
    assert not weight[:16].any() and not bias[:16].any(), "q/k rows reached through the softmax"
    assert weight[16:].any() and bias[16:].any(), "V keeps its gradient"


class _MHAModel(nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha, self.head = mha, nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.mha(x, x, x, need_weights=False)[0].mean(1))


def test_learned_query_of_attention_pool_gets_no_gradient():
    """SigLIP's MAP head: q comes from a learned latent, not the input; its projection still
    must not get gradient through the softmax."""
    import timm
    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=5, img_size=32,
                              patch_size=8, depth=1, embed_dim=32, num_heads=2).eval()
    randomise_bias_terms(model)
    x = torch.randn(2, 3, 32, 32)
    grads = _grads(_transform(model, x), x)
    pool = {n: g for n, g in grads.items() if n.startswith("attn_pool.q.") or n == "attn_pool.latent"}
    assert not any(g.any() for g in pool.values()), sorted(n for n, g in pool.items() if g.any())
    assert grads["attn_pool.kv.bias"].any()


def test_parameter_built_attention_mask_gets_no_gradient():
    """MaxViT's relative-position MLP feeds SDPA's additive mask: a score term, blocked too, and
    the forward stays bit-identical (the CPU kernel is chosen from the mask's requires_grad)."""
    result = check(BY_NAME["maxvit_rmlp_nano_rw_256"])
    assert result.forward_equal and result.grad_ce_after <= 1e-10 and result.own_vs_grad <= 1e-10


# ---------------------------------------------------------------------------------------------
# 2. powers


class _Powers(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 12), act, nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("act, k", [(StarReLU(), 2.0), (lambda h: F.relu(h) ** 3, 3.0),
                                    (lambda h: torch.square(F.relu(h)), 2.0)], ids=["star_relu", "cube", "square"])
def test_power_is_scaled_once(act, k):
    torch.manual_seed(0)
    model = _Powers(act).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    balanced = _transform(model, x, strict=True)
    scales = [n.args[1] for n in balanced.graph.nodes if n.target is scale_grad]
    assert scales == [1.0 / k], scales  # one scale, 1/k, whatever the number of rounds
    assert apply_passes(balanced, check_passes(None)) == []  # another round finds nothing to scale
    assert grad_completeness(balanced, (x,), lambda out: out[:, 0]).error <= 1e-10


# ---------------------------------------------------------------------------------------------
# 3. frozen models


def test_frozen_transformer_encoder_transforms():
    """Frozen parameters: eager takes MHA's fused path unless something asks for gradient; the
    forward check must compare like with like instead of raising ForwardMismatchError."""
    model, x = BY_NAME["nn.TransformerEncoder (frozen)"].build()
    assert not any(p.requires_grad for p in model.parameters())
    balanced = libra_fx.transform(model, x, strict=True)
    assert torch.equal(balanced(x.clone().requires_grad_(True)), model(x.clone().requires_grad_(True)))


# ---------------------------------------------------------------------------------------------
# 4. custom autograd.Function under torch.export


class _Doubler(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class _WithFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return _Doubler.apply(self.fc(x)).sum(-1, keepdim=True)


def test_autograd_function_under_export_is_reported_not_a_crash():
    model, x = _WithFunction().eval(), torch.randn(2, 4)
    balanced = _transform(model, x, capture="export")
    assert torch.equal(balanced(x), model(x))
    assert any("_Doubler" in f.op for f in balanced.libra_report.unbalanced)


# ---------------------------------------------------------------------------------------------
# 5. casts (Hugging Face RMSNorm)


class _HFStyleRMSNorm(nn.Module):
    """``transformers``' LlamaRMSNorm, written out: float32 cast, rsqrt, cast back."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, hidden):
        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + 1e-6)
        return self.weight * hidden.to(dtype)


def test_casts_do_not_stop_the_rms_norm_rule_in_export_graphs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), _HFStyleRMSNorm(6), nn.Linear(6, 2)).eval()
    x = torch.randn(3, 6)
    balanced = libra_fx.transform(model, x, capture="export", strict=True)
    assert balanced.libra_report.traced.meta["libra_capture"] == "torch.export"
    assert grad_completeness(balanced, (x,), lambda out: out[:, 0]).error <= 1e-5


# ---------------------------------------------------------------------------------------------
# 6. stale facts inside one round


def test_hugging_face_mamba_transforms():
    """A gate found at match time can be gone at rewrite time (an earlier rewrite of the same round
    replaced its factor): the rewrite must skip it, not insert ``const(None)``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=1,
                                      intermediate_size=32, conv_kernel=3, time_step_rank=2)
    model = _LastLogit(transformers.MambaForCausalLM(config)).eval()
    embeddings = torch.randn(2, 6, 16)
    balanced = _transform(model, embeddings)
    assert torch.equal(balanced(embeddings), model(embeddings))


class _LastLogit(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, embeddings):
        return self.lm(inputs_embeds=embeddings, use_cache=False).logits[:, -1]


# ---------------------------------------------------------------------------------------------
# 7. hand-written tanh GELU


def test_hand_written_tanh_gelu_is_a_gate_and_its_constants_are_not_biases():
    torch.manual_seed(0)
    model = _Powers(gelu_new).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    balanced = libra_fx.transform(model, x, strict=True)
    assert balanced.libra_report.counts() == {"multiplicative_gate": 1}
    terms = fullgrad_terms(balanced, (x,), 0)
    literal = [s for s in terms.sites if not any(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in s.args)]
    assert literal == [], "the gate's literal 1.0 is not a bias term"
    assert terms.completeness_error.max() <= 1e-10


# ---------------------------------------------------------------------------------------------
# 8. outputs that mix batch rows, and sites not laid out batch-first


def test_audit_is_exact_for_outputs_mixing_batch_rows():
    """CLIP's image-text logits: row i's score depends on text row j. The audit gives each row its
    own backward, and agrees with the .grad sum."""
    model, (image, text) = BY_NAME["open_clip ViT-B-32 (contrastive)"].build()
    model = randomise_bias_terms(model.double())
    inputs = (image.double(), text.double())
    report = libra_fx.audit(model, inputs)
    assert report.balanced and report.completeness_after <= 1e-8, report.completeness_after
    assert report.completeness_before > 1e-2


def test_per_sample_bias_terms_of_exported_attention():
    """An exported nn.MultiheadAttention computes on (L, B, D) and (L·B, D) tensors: its bias
    terms cannot be split by leading rows (fuzz counterexample, seed 40020)."""
    from .archgen import BlockSpec, Spec, build
    spec = Spec((BlockSpec("attention", "explicit", causal=True), BlockSpec("attention", "mha", causal=True)),
                cls_token=True, pool="cls", seed=40020)
    model, x = build(spec)
    balanced = _transform(model, x)
    assert fullgrad_terms(balanced, (x,), 0).completeness_error.max() <= 1e-10
    assert row_completeness_error(balanced, (x,), 0).max() <= 1e-10


# ---------------------------------------------------------------------------------------------
# 9. PyTorch CPU batch_norm backward at batch 1


class _ConvPatchEmbed(nn.Module):
    """XCiT's patch embedding tail: conv → eval BatchNorm → tokens (B, N, C)."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(16, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.Linear(64, 3)
        with torch.no_grad():
            self.norm.running_mean.normal_(0, 0.1)
            self.norm.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        tokens = self.norm(self.conv(x)).flatten(2).transpose(1, 2)
        return self.head(tokens)[:, 0]


def test_batch_norm_gradient_at_batch_one():
    torch.manual_seed(0)
    model = _ConvPatchEmbed().eval()
    balanced = libra_fx.transform(model, torch.randn(1, 16, 4, 4))
    x = torch.randn(1, 16, 4, 4)
    alone = _input_grad(balanced, x)
    in_batch = _input_grad(balanced, torch.cat((x, torch.randn_like(x))))[:1]
    assert (alone - in_batch).abs().max() <= 1e-5 * in_batch.abs().max()
    assert torch.equal(balanced(x), model(x))


def _input_grad(module, x):
    x = x.clone().requires_grad_(True)
    module(x)[:1, 0].sum().backward()
    return x.grad


# ---------------------------------------------------------------------------------------------
# the independent check itself


def test_is_additive_names():
    assert is_additive("blocks.0.attn.qkv.bias") and is_additive("mha.in_proj_bias")
    assert is_additive("cls_token") and is_additive("encoder.pos_embedding") and is_additive("wpe.weight")
    assert not is_additive("blocks.0.attn.qkv.weight") and not is_additive("blocks.0.ls1.gamma")
    assert not is_additive("blocks.0.attn.relative_position_bias_table")


@pytest.mark.parametrize("name, additive", [  # Hugging Face names
    ("model.layers.0.self_attn.q_proj.bias", True), ("head.attention.in_proj_bias", True),
    ("model.logit_bias", True), ("bert.embeddings.position_embeddings.weight", True),
    ("transformer.wpe.weight", True), ("vit.embeddings.cls_token", True),
    ("clip.vision_model.embeddings.class_embedding", True), ("model.decoder.embed_positions.weight", True),
    ("bert.embeddings.token_type_embeddings.weight", True),
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False),  # feeds the scores
    ("model.layers.0.input_layernorm.weight", False), ("model.embed_tokens.weight", False),
    ("lm_head.weight", False), ("model.layers.0.mlp.bias_scale", False),
])
def test_is_additive_hugging_face_names(name, additive):
    assert is_additive(name) is additive


def test_grad_completeness_counts_biases_and_sees_imbalance():
    torch.manual_seed(0)
    affine = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, first = torch.randn(2, 4, dtype=torch.float64), lambda out: out[:, 0]
    for per_sample in (False, True):
        complete = grad_completeness(affine, (x,), first, per_sample=per_sample)
        assert torch.as_tensor(complete.error).max() < 1e-12 and torch.as_tensor(complete.bias_term).abs().min() > 0
        assert complete.additive == ["0.bias", "2.bias"]
        gated = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3)).double()
        assert torch.as_tensor(grad_completeness(gated, (x,), first, per_sample=per_sample).error).max() > 1e-3
        no_bias = grad_completeness(affine, (x,), first, additive=lambda name: False, per_sample=per_sample)
        assert torch.as_tensor(no_bias.error).max() > 1e-3  # the biases matter: without them the sum is short


def test_grad_completeness_per_sample_adds_up_to_the_total():
    torch.manual_seed(0)
    model = randomise_bias_terms(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3)).double())
    x, first = torch.randn(3, 4, dtype=torch.float64), lambda out: out[:, 0]
    total, rows = grad_completeness(model, (x,), first), grad_completeness(model, (x,), first, per_sample=True)
    assert rows.score.shape == rows.bias_term.shape == (3,)
    assert math.isclose(rows.residual.sum().item(), total.residual, rel_tol=1e-9, abs_tol=1e-12)


def test_grad_completeness_leaves_the_module_alone():
    model = nn.Linear(3, 2).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for per_sample in (False, True):
        grad_completeness(model, (torch.randn(2, 3, dtype=torch.float64),), lambda out: out[:, 0],
                          per_sample=per_sample)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_grad_completeness_sees_a_wrong_parameter_gradient():
    """The check is not vacuous: plain gradients (q-projection bias reached through the softmax,
    LayerNorm's std) fail it, the balanced graph passes it."""
    torch.manual_seed(0)
    model = randomise_bias_terms(_MHAModel(nn.MultiheadAttention(8, 2, batch_first=True)).double().eval())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    balanced = libra_fx.transform(model, x)
    target = lambda out: out[:, 0]
    assert grad_completeness(balanced.libra_report.traced, (x,), target).error > 1e-3
    assert grad_completeness(balanced, (x,), target).error <= 1e-10
    assert math.isfinite(grad_completeness(model, (x,), target).score)
