"""Language models: ``attribute(model, input_ids=...)`` on tiny random Hugging Face models (no download).

Completeness is checked in float64 with every bias and position embedding randomised (HF initialises
biases to 0, which would hide the bias terms).
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

import libra_fx
from libra_fx.errors import InputError, TargetError, UnknownMethodError
from libra_fx.hf import tiny_model
from libra_fx.text import Contrast, TextModel, text_methods

pytest.importorskip("transformers")
warnings.filterwarnings("ignore", message=".*unbalanced.*")


def _randomised(name: str):
    model, tok = tiny_model(name)
    model = model.double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("bias") or "position" in key or "token_type" in key:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.5)
    return TextModel(model), tok


@pytest.fixture(scope="module")
def neox():
    return _randomised("gpt_neox")


@pytest.fixture(scope="module")
def bert():
    return _randomised("bert")


def _ids(tok, *texts, side="right"):
    """Padded ``(ids, mask)`` of several texts."""
    encoded = [tok.encode(t) for t in texts]
    length = max(map(len, encoded))
    ids, mask = [], []
    for e in encoded:
        pad = [0] * (length - len(e))
        ids.append(pad + e if side == "left" else e + pad)
        ones = [1] * len(e)
        mask.append([0] * len(pad) + ones if side == "left" else ones + [0] * len(pad))
    return torch.tensor(ids), torch.tensor(mask)


# --------------------------------------------------------------------------- forward and completeness


@pytest.mark.parametrize("which", ["neox", "bert"])
def test_balanced_forward_equals_the_model(which, request):
    lm, tok = request.getfixturevalue(which)
    ids, mask = _ids(tok, "the cat sat", "a dog", side="left")
    inputs = lm.inputs(ids, mask)
    expected = lm.model(input_ids=ids, attention_mask=mask, position_ids=inputs[2]).logits
    assert torch.equal(lm.graph(inputs)(*inputs).logits, expected)


def _check_fullgrad(lm, tok, target=None):
    ids, mask = _ids(tok, "the cat sat", "a dog")
    result = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=target, method="fullgrad")
    assert result.completeness_error.max() <= 1e-5
    # per-token relevance (input × gradient plus the bias terms placed at each token) and the bias
    # terms at no token (a classifier's pooler and head) sum to the logit
    torch.testing.assert_close(result.token_scores.sum(-1) + result.unplaced_bias, result.score, rtol=1e-5, atol=1e-8)
    total = result.input_attr.sum((-1, -2)) + result.bias_attr
    torch.testing.assert_close(total, result.score, rtol=1e-5, atol=1e-8)
    plain = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=target, method="fullgrad", libra=False)
    assert plain.completeness_error.max() > 1e-3  # the plain graph is not complete: the check can fail
    return result


def test_fullgrad_is_complete_on_gpt_neox(neox):
    result = _check_fullgrad(*neox, target=7)
    # a causal LM's bias terms all sit at tokens; position handled as bias where added (BERT below)
    assert result.unplaced_bias.abs().max() < 1e-12


def test_fullgrad_is_complete_on_a_bert_classifier(bert):
    result = _check_fullgrad(*bert, target=1)
    assert not result.language_model and result.token_scores.shape == (2, 12)
    assert result.unplaced_bias.abs().min() > 1e-3  # pooler and classifier biases are at no token
    # position and token-type embeddings are bias terms: input×gradient alone does not add up
    ixg = result.input_attr.sum((-1, -2))
    assert ((ixg - result.score).abs() > 1e-3).all()


def test_fullgrad_is_complete_on_llama():
    _check_fullgrad(*_randomised("tiny-llama"), target=7)


@pytest.mark.parametrize("name", [
    "distilbert", "opt", "falcon",  # RoBERTa, Qwen2, ...: benchmarks/text_families.py
    "gpt2", "qwen2",  # hand-written tanh GELU; RMSNorm with casts and q/k/v biases
])
def test_fullgrad_is_complete_on_more_families(name):
    _check_fullgrad(*_randomised(name), target=1)


# --------------------------------------------------------------------------- targets


def _logits(lm, ids, mask):
    inputs = lm.inputs(ids, mask)
    return lm.wrapper(*inputs).logits.detach()


def test_next_token_targets(neox):
    lm, tok = neox
    ids, mask = _ids(tok, "the cat sat", "a dog")
    last = _logits(lm, ids, mask)[torch.arange(2), torch.tensor([11, 5])]
    shared = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=9, method="input_x_gradient")
    torch.testing.assert_close(shared.score, last[:, 9])
    per_sample = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=torch.tensor([3, 4]),
                                    method="input_x_gradient")
    torch.testing.assert_close(per_sample.score, last[[0, 1], [3, 4]])
    default = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, method="input_x_gradient")
    torch.testing.assert_close(default.score, last.max(-1).values)  # the model's own prediction


def test_contrast_is_the_difference_of_two_targets(neox):
    lm, tok = neox
    ids, mask = _ids(tok, "the cat sat", "a dog")
    run = lambda target: libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=target, method="fullgrad")
    both, first, second = run(Contrast(5, 7)), run(5), run(7)
    torch.testing.assert_close(both.token_scores, first.token_scores - second.token_scores)
    torch.testing.assert_close(both.score, first.score - second.score)
    assert both.completeness_error.max() <= 1e-5


@pytest.mark.parametrize("method", ["fullgrad", "integrated_gradients", "fullgrad+", "rollout"])
def test_teacher_forced_continuation_equals_one_target_at_a_time(neox, method):
    lm, tok = neox
    ids, mask = _ids(tok, "the cat sat", "a dog")  # right padding: the continuation follows the gap
    continuation = [10, 11, 12]
    options = {"steps": 4} if method == "integrated_gradients" else {}
    result = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=continuation, method=method, **options)
    assert result.continuation and result.token_scores.shape == (2, 3, 14) and result.score.shape == (2, 3)
    for row in range(2):
        real = ids[row][mask[row].bool()].tolist()
        for k in range(3):
            alone = libra_fx.attribute(lm, input_ids=torch.tensor([real + continuation[:k]]),
                                       target=continuation[k], method=method, **options)
            ours = result.token_scores[row, k][result.attention_mask[row].bool()][:len(real) + k]
            torch.testing.assert_close(ours, alone.token_scores[0])
            torch.testing.assert_close(result.score[row, k], alone.score[0])


def test_class_index_and_callable_targets(bert):
    lm, tok = bert
    ids, mask = _ids(tok, "the cat sat", "a dog")
    logits = _logits(lm, ids, mask)
    by_index = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=0, method="gradient")
    by_callable = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=lambda out: out.logits[:, 0],
                                     method="gradient")
    torch.testing.assert_close(by_index.score, logits[:, 0])
    torch.testing.assert_close(by_index.token_scores, by_callable.token_scores)
    with pytest.raises(TargetError, match="classifier"):
        libra_fx.attribute(lm, input_ids=ids, target=[1, 2], method="fullgrad")


# --------------------------------------------------------------------------- padding and lengths


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", ["fullgrad", "integrated_gradients", "gradcam+", "rollout"])
def test_padded_row_equals_the_unpadded_one(neox, side, method):
    lm, tok = neox
    ids, mask = _ids(tok, "the cat sat", "a dog", side=side)
    options = {"steps": 4} if method == "integrated_gradients" else {}
    padded = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=5, method=method, **options)
    alone = libra_fx.attribute(lm, input_ids=ids[1][mask[1].bool()], target=5, method=method, **options)
    keep = mask[1].bool()
    assert torch.equal(padded.token_scores[1][~keep], torch.zeros(int((~keep).sum()), dtype=torch.float64))
    if method != "gradcam+":  # GradCAM's weights average over all T positions, padding included
        torch.testing.assert_close(padded.token_scores[1][keep], alone.token_scores[0])
        torch.testing.assert_close(padded.score[1], alone.score[0])


def test_one_capture_serves_every_length(neox):
    lm, tok = neox
    for text in ("ab", "the cat", "the cat sat on the mat"):
        result = libra_fx.attribute(lm, input_ids=torch.tensor([tok.encode(text)] * 3), target=4, method="fullgrad")
        assert result.token_scores.shape == (3, len(text) + 1)
        assert result.completeness_error.max() <= 1e-5
    assert list(lm.captures) == ["dynamic"]


def test_a_bare_model_is_captured_per_call_and_left_alone():
    model, tok = tiny_model("opt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    ids = torch.tensor([tok.encode("the cat")])
    result = libra_fx.attribute(model, input_ids=ids, target=3, method="input_x_gradient")
    expected = model(input_ids=ids).logits[0, -1, 3]
    torch.testing.assert_close(result.score[0], expected.detach())
    assert [type(m) for m in model.modules()] == modules and model.training is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _NoDynamic(TextModel):
    """A model whose dynamic graph serves no shape: every new shape is captured on its own."""

    def _serves(self, gm, inputs):
        return False


def test_a_shape_the_dynamic_graph_does_not_serve_is_recaptured(neox):
    lm, tok = _NoDynamic(neox[0].model), neox[1]
    for text in ("the cat", "the cat sat", "the cat"):
        result = libra_fx.attribute(lm, input_ids=torch.tensor([tok.encode(text)]), target=4, method="fullgrad")
        assert result.completeness_error.max() <= 1e-5
    assert [k for k in lm.captures if k != "dynamic"] == [(1, 8), (1, 12)]


@pytest.mark.parametrize("method", sorted(text_methods()))
def test_every_method_gives_finite_token_scores(neox, method):
    lm, tok = neox
    ids, mask = _ids(tok, "the cat sat", "a dog", side="left")
    options = {"steps": 2} if method == "integrated_gradients" else {}
    result = libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, target=[3, 4], method=method, **options)
    assert result.token_scores.shape == (2, 2, 13) and torch.isfinite(result.token_scores).all()
    if method in ("rollout", "raw_attention"):
        torch.testing.assert_close(result.token_scores.sum(-1), torch.ones(2, 2, dtype=torch.float64))


def test_bad_text_arguments(neox):
    lm, tok = neox
    with pytest.raises(UnknownMethodError, match="did you mean 'fullgrad'"):
        libra_fx.attribute(lm, input_ids=torch.tensor([[1, 2]]), method="fullgrd")
    with pytest.raises(InputError, match="does not match"):
        libra_fx.attribute(lm, input_ids=torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3), method="fullgrad")
    with pytest.raises(InputError, match="integer token ids"):
        libra_fx.attribute(lm, input_ids=torch.randn(1, 3), method="fullgrad")
    with pytest.raises(InputError, match="token id 500 is out of range for the vocabulary of 98"):
        libra_fx.attribute(lm, input_ids=torch.tensor([[1, 500]]), method="fullgrad")


# --------------------------------------------------------------------------- command line


def test_cli_explain_tiny_llama_offline(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "libra_fx.cli", "explain", "hf:tiny-llama", "--text", "the cat sat",
                           "--method", "fullgrad", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "libra · fullgrad" in proc.stdout and "→" in proc.stdout and "the cat sat" in proc.stdout
    page = (tmp_path / "hf-tiny-llama__fullgrad.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert "http" not in page and "<script" not in page and "<link" not in page  # self-contained
    data = json.loads((tmp_path / "hf-tiny-llama__fullgrad.json").read_text())
    assert data["model"] == "hf:tiny-llama" and set(data["results"]) == {"plain", "libra"}
    rows = data["results"]["libra"]["rows"]
    assert len(rows) == 3  # --generate 3 by default: one row per generated token
    assert [len(r["tokens"]) for r in rows] == [12, 13, 14] and rows[0]["tokens"][1:] == list("the cat sat")


def test_cli_unknown_hf_model_is_one_line(capsys):
    from libra_fx import cli

    assert cli.main(["audit", "hf:lama"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown hf model type 'lama'; did you mean llama" in err[0]


def test_cli_audit_and_diff_on_hf(tmp_path):
    from libra_fx import cli

    out = tmp_path / "audit.json"
    assert cli.main(["audit", "hf:gpt_neox", "--format", "json", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["unbalanced"] == [] and data["completeness_after"] < 1e-4 < data["completeness_before"]
    out = tmp_path / "diff.json"
    assert cli.main(["diff", "hf:bert", "--format", "json", "-o", str(out)]) == 0
    assert {r["pass"] for r in json.loads(out.read_text())["rewrites"]} >= {"normalization", "sdpa_attention"}
