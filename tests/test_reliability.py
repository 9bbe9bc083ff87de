"""Reliability (issue 8): bad models, bad inputs and odd settings get clear answers, never wrong
gradients. Tiny random-weight models only; the whole file runs in well under a minute on 2 cores."""
from __future__ import annotations

import collections
import copy
import dataclasses
import threading
import warnings
from typing import Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import libra_fx
from libra_fx.errors import (DeviceMismatchError, InputError, LibraError, TargetError, TraceError,
                             UnbalancedError, UnknownMethodError, UnknownPassError)
from libra_fx.runner import fullgrad_terms
from libra_fx.targets import target_score
from libra_fx.validation import check_method, check_target

timm = pytest.importorskip("timm")


def quiet_transform(model, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return libra_fx.transform(model, *args, **kwargs)


def tiny_vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, num_heads=2,
                              embed_dim=16, num_classes=4, **kwargs)
    nn.init.normal_(model.head.weight, std=0.1)  # timm zero-inits the head
    return model.eval()


def input_grad(model: nn.Module, x: torch.Tensor, target: int = 0) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    score = target_score(model(x), target).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad


class Block(nn.Module):
    """A ViT-like block: pre-norm softmax attention and a GELU MLP, with residuals."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def attention(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


# ---------------------------------------------------------------------------------------------
# 1. models FX cannot trace


class ShapeBranchBlock(Block):
    """``if`` on a shape and ``len()`` of a proxy: FX fails, torch.export specialises."""

    def forward(self, x):
        if x.shape[1] > 1 and len(x) > 0:
            x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ValueBranchBlock(Block):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent: neither FX nor export can capture this
            return super().forward(x)
        return x


def test_export_fallback_is_balanced():
    torch.manual_seed(0)
    model, x = ShapeBranchBlock().eval(), torch.randn(2, 5, 8)
    gm = quiet_transform(model, x, strict=True)
    assert gm.meta["libra_capture"] == "torch.export"
    assert {"softmax_attention", "normalization", "gated_activation"} <= set(gm.libra_report.counts())
    assert torch.equal(gm(x), model(x))
    terms = fullgrad_terms(gm, (x,), lambda out: out.sum((1, 2)))
    assert terms.completeness_error.max() < 1e-4


def test_untraceable_error_names_model_op_and_line():
    model, x = ValueBranchBlock().eval(), torch.randn(2, 5, 8)
    with pytest.raises(TraceError) as no_inputs:
        libra_fx.transform(model)
    message = str(no_inputs.value)
    assert "ValueBranchBlock" in message and "x.sum() > 0" in message and "test_reliability.py:" in message
    assert "example_inputs" in message
    with pytest.raises(TraceError) as with_inputs:
        libra_fx.transform(model, x)
    message = str(with_inputs.value)
    assert message.index("torch.export failed") < message.index("symbolic tracing failed")
    assert "rewrite the branch" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# 2. train-mode models


def test_train_mode_warns_and_runs_eval_without_touching_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.GELU(), nn.Linear(6, 3)).train()
    x = torch.randn(4, 6)
    flags = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    with pytest.warns(libra_fx.errors.LibraWarning, match="train mode"):
        gm = libra_fx.transform(model, x)
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model[1].running_mean, stats)  # no batch-statistics update
    reference = copy.deepcopy(model).eval()
    assert torch.equal(gm(x), reference(x))
    assert torch.equal(gm(x), gm(x))  # no dropout


# ---------------------------------------------------------------------------------------------
# 3. in-place ops, custom autograd.Function, unknown ops


class InPlace(nn.Module):
    def __init__(self, dim: int = 6):
        super().__init__()
        self.fc, self.out = nn.Linear(dim, dim), nn.Linear(dim, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        shortcut = h  # aliases h: sees the in-place updates below in eager mode
        h += x
        h.mul_(2)
        h = F.gelu(h)
        h = self.act(h)
        return self.out(h + shortcut)


class OutOfPlace(InPlace):
    def forward(self, x):
        h = (self.fc(x) + x) * 2
        return self.out(F.relu(F.gelu(h)) + h)


def test_inplace_ops_are_balanced_like_out_of_place():
    torch.manual_seed(0)
    model, x = InPlace().eval(), torch.randn(3, 6)
    reference = OutOfPlace().eval()
    reference.load_state_dict(model.state_dict())
    gm, ref = quiet_transform(model, x, strict=True), quiet_transform(reference, x, strict=True)
    assert torch.equal(gm(x), model(x))
    assert torch.allclose(input_grad(gm, x), input_grad(ref, x), atol=1e-6)
    assert fullgrad_terms(gm, (x,), 1).completeness_error.max() < 1e-4


class ViewMutation(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        h[:, :2].mul_(2)  # mutates h through a view: cannot be made out-of-place simply
        return h * 1.0


def test_inplace_through_view_is_reported():
    model, x = ViewMutation().eval(), torch.randn(2, 4)
    gm = quiet_transform(model, x)
    assert torch.equal(gm(x), model(x))
    assert any("view" in f.reason for f in gm.libra_report.unbalanced)
    with pytest.raises(UnbalancedError):
        libra_fx.transform(model, x, strict=True)


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # deliberately not 2x: the engine must not assume it knows


class WithFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return Square.apply(self.fc(x)) + 1


def test_custom_autograd_function_is_opaque():
    model, x = WithFunction().eval(), torch.randn(2, 4)
    report = libra_fx.audit(model, x)
    assert any("Square.apply" in f.op and "unknown op" in f.reason for f in report.unbalanced)
    with pytest.raises(UnbalancedError, match="Square.apply"):
        libra_fx.transform(model, x, strict=True)
    gm = quiet_transform(model, x)
    assert torch.equal(input_grad(gm, x), input_grad(model, x))  # its own backward still runs


# ---------------------------------------------------------------------------------------------
# 4. output structures


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: Optional[torch.Tensor] = None


class ModelOutput(collections.OrderedDict):
    """Hugging Face style: an OrderedDict whose keys are also attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class Structured(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.norm, self.fc = kind, nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x):
        hidden = F.gelu(self.norm(x))
        logits = self.fc(hidden)
        return {"tuple": lambda: (logits, hidden), "dict": lambda: {"hidden": hidden, "logits": logits},
                "dataclass": lambda: Output(logits=logits, hidden=hidden),
                "model_output": lambda: ModelOutput(hidden=hidden, logits=logits),
                "nested": lambda: (Output(logits, None), [ModelOutput(logits=logits)])}[self.kind]()


@pytest.mark.parametrize("kind", ["tuple", "dict", "dataclass", "model_output", "nested"])
def test_output_structures(kind):
    torch.manual_seed(0)
    model, x = Structured(kind).eval(), torch.randn(2, 4)
    gm = quiet_transform(model, x, strict=True)
    out, expected = gm(x), model(x)
    assert type(out) is type(expected)
    if kind == "model_output":
        assert torch.equal(out.logits, expected.logits)
    terms = fullgrad_terms(gm, (x,), 1)  # "logits" (or the first tensor) by default
    assert terms.completeness_error.max() < 1e-4
    assert torch.equal(terms.score, expected_logits(expected)[:, 1])
    if kind in ("dict", "dataclass", "model_output"):
        pick = (lambda o: o["hidden"].sum(1)) if kind != "dataclass" else (lambda o: o.hidden.sum(1))
        picked = fullgrad_terms(gm, (x,), pick)
        assert picked.completeness_error.max() < 1e-4
    copy.deepcopy(gm)(x)


def expected_logits(output):
    if isinstance(output, tuple):
        output = output[0]
    return output.logits if hasattr(output, "logits") else output["logits"] if isinstance(output, dict) else output


# ---------------------------------------------------------------------------------------------
# 5. dtypes and devices


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_identity_per_dtype(dtype):
    model = tiny_vit().to(dtype)
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    gm = quiet_transform(model, x)  # verification checks torch.equal internally
    assert torch.equal(gm(x), model(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_forward_identity_cuda():
    model, x = tiny_vit().cuda(), torch.randn(2, 3, 16, 16, device="cuda")
    gm = quiet_transform(model, x)
    assert torch.equal(gm(x), model(x))


def test_input_on_other_device_is_a_clear_error():
    model = tiny_vit()
    with pytest.raises(DeviceMismatchError, match="meta.*cpu"):
        libra_fx.transform(model, torch.empty(2, 3, 16, 16, device="meta"))


# ---------------------------------------------------------------------------------------------
# 6. module hygiene


def test_save_load_state_dict_and_deepcopy(tmp_path):
    model, x = tiny_vit(), torch.randn(2, 3, 16, 16)
    gm = quiet_transform(model, x)
    path = tmp_path / "gm.pt"
    torch.save(gm, path)
    loaded = torch.load(path, weights_only=False)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(input_grad(loaded, x), input_grad(gm, x))
    assert set(gm.state_dict()) == set(model.state_dict())
    other = tiny_vit()
    nn.init.normal_(other.head.weight)
    gm.load_state_dict(other.state_dict())  # original -> transformed
    assert torch.equal(gm(x), other(x))
    other.load_state_dict(gm.state_dict())  # transformed -> original
    clone = copy.deepcopy(gm)
    assert libra_fx.is_transformed(clone) and torch.equal(clone(x), gm(x))
    assert libra_fx.transform(gm) is gm


def test_threads_do_not_interfere():
    models = [tiny_vit(), Structured("model_output").eval()]
    inputs = [torch.randn(2, 3, 16, 16), torch.randn(2, 4)]
    sequential = [input_grad(quiet_transform(m, x), x, 1) for m, x in zip(models, inputs)]
    results: list = [None, None]

    def work(i):
        results[i] = input_grad(quiet_transform(models[i], inputs[i]), inputs[i], 1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(results, sequential))


def test_no_global_state_changes():
    x = torch.randn(2, 3, 16, 16)
    before = input_grad(tiny_vit(), x)
    apply, grad_mode = torch.autograd.Function.apply, torch.is_grad_enabled()
    quiet_transform(tiny_vit(), x)
    quiet_transform(WithFunction().eval(), torch.randn(2, 4))
    assert torch.equal(input_grad(tiny_vit(), x), before)
    assert torch.autograd.Function.apply == apply and torch.is_grad_enabled() == grad_mode


# ---------------------------------------------------------------------------------------------
# 8. bad arguments


def test_bad_arguments_give_one_line_errors():
    model, x = tiny_vit(), torch.randn(2, 3, 16, 16)
    with pytest.raises(UnknownPassError, match="known passes and groups: .*attention") as info:
        libra_fx.transform(model, passes=["nope"])
    assert isinstance(info.value, ValueError) and isinstance(info.value, LibraError)
    with pytest.raises(UnknownMethodError, match="did you mean 'fullgrad'"):
        check_method("fullgrd", ["ixg", "fullgrad"])
    with pytest.raises(TargetError, match="out of range for 4 classes"):
        target_score(model(x), 7)
    with pytest.raises(TargetError, match="out of range"):
        check_target(torch.tensor([0, 9]), torch.zeros(2, 4))
    with pytest.raises(InputError, match="rank 4"):
        libra_fx.transform(model, torch.randn(3, 16, 16))
    with pytest.raises(InputError, match="input channels"):
        libra_fx.transform(model, torch.randn(2, 1, 16, 16))
    with pytest.raises(InputError, match="own forward fails") as info:
        libra_fx.transform(nn.Linear(4, 2).eval(), torch.randn(2, 5))
    assert "\n" not in str(info.value)
