"""Smoke tests of the text faithfulness benchmark (benchmarks/text_faithfulness): ground truth, training, scoring."""
import math

import pytest
import torch

from benchmarks.text_faithfulness.adapter import EmbedsModel, rollout_relevance, token_relevance
from benchmarks.text_faithfulness.data import (KV_KEY0, KV_KEYS, KV_PAIRS, KV_VALUE0, KV_VALUES, KW_CLASSES, KW_KEY0,
                                               KW_PER_CLASS, KW_WORD0, MASK, TASKS, keyword_class, make_batch,
                                               sample_kv_train)
from benchmarks.text_faithfulness.evaluate import Explained, aggregate, variants
from benchmarks.text_faithfulness.models import build_model
from benchmarks.text_faithfulness.scoring import score_relevance
from benchmarks.text_faithfulness.train import batch_loss, train_step

torch.set_num_threads(1)


def kv_answer(ids: torch.Tensor, pairs: int = KV_PAIRS) -> torch.Tensor:
    """Ground truth recomputed from the tokens: the value after the context key equal to the query."""
    keys, values = ids[:, : 2 * pairs : 2], ids[:, 1 : 2 * pairs : 2]
    hit = keys == ids[:, -1:]
    assert bool((hit.sum(1) == 1).all()), "each query key appears exactly once in the context"
    return values[hit]


def keyword_answer(ids: torch.Tensor) -> torch.Tensor:
    classes = keyword_class(ids)
    assert bool(((classes >= 0).sum(1) == 1).all()), "exactly one keyword per sequence"
    return classes.max(1).values


ANSWER = {"kv": kv_answer, "keyword": keyword_answer}


def _other_token(token: int, lo: int, count: int) -> int:
    return lo + (token - lo + 1) % count


@pytest.mark.parametrize("task", sorted(TASKS))
def test_labels_follow_from_the_tokens(task):
    batch = make_batch(task, 64, seed=3)
    assert batch.ids.shape == (64, TASKS[task].seq_len)
    assert bool((batch.ids < TASKS[task].vocab_size).all())
    assert torch.equal(ANSWER[task](batch.ids), batch.labels)


def test_kv_evidence_decides_the_answer():
    batch = make_batch("kv", 32, seed=1)
    for b in range(32):
        ids, ev = batch.ids[b : b + 1].clone(), batch.evidence[b]
        key_pos, value_pos, query_pos = ev.nonzero().flatten().tolist()
        assert (key_pos % 2, value_pos, query_pos) == (0, key_pos + 1, ids.shape[1] - 1)
        changed = ids.clone()
        changed[0, value_pos] = _other_token(int(ids[0, value_pos]), KV_VALUE0, KV_VALUES)
        assert kv_answer(changed) != kv_answer(ids)
        # every distractor value can change without changing the answer
        for pos in range(1, 2 * KV_PAIRS, 2):
            if pos != value_pos:
                changed = ids.clone()
                changed[0, pos] = _other_token(int(ids[0, pos]), KV_VALUE0, KV_VALUES)
                assert kv_answer(changed) == kv_answer(ids)
        # a distractor key replaced by a key absent from the context changes nothing either
        absent = sorted(set(range(KV_KEY0, KV_KEY0 + KV_KEYS)) - set(ids[0, : 2 * KV_PAIRS : 2].tolist()))[0]
        other_key = next(p for p in range(0, 2 * KV_PAIRS, 2) if p != key_pos)
        changed = ids.clone()
        changed[0, other_key] = absent
        assert kv_answer(changed) == kv_answer(ids)


def test_keyword_evidence_decides_the_label():
    batch = make_batch("keyword", 32, seed=2)
    assert torch.equal(batch.evidence.sum(1), torch.ones(32, dtype=torch.long))
    for b in range(32):
        ids = batch.ids[b : b + 1].clone()
        pos = int(batch.evidence[b].nonzero())
        changed = ids.clone()
        changed[0, pos] = KW_KEY0 + ((int(keyword_class(ids[0, pos])) + 1) % KW_CLASSES) * KW_PER_CLASS
        assert keyword_answer(changed) != keyword_answer(ids)
        distractor = (pos + 1) % ids.shape[1]
        changed = ids.clone()
        changed[0, distractor] = KW_WORD0 + (int(ids[0, distractor]) - KW_WORD0 + 1) % (KW_KEY0 - KW_WORD0)
        assert keyword_answer(changed) == keyword_answer(ids)


def test_training_masks_only_distractors_and_supervises_every_query():
    batch = make_batch("keyword", 256, seed=0, mask_prob=0.5)
    assert bool((batch.ids == MASK).any()) and not bool((batch.ids[batch.evidence] == MASK).any())
    kv = sample_kv_train(64, torch.Generator().manual_seed(0), 0.3)
    supervised = kv.targets >= 0
    assert bool((supervised.sum(1) == 4).all())
    # every supervised target is the value of the key just read, in the sequence's own context
    first = int(supervised[0].nonzero()[0])
    assert first % 2 == 0 and 2 <= first // 2 <= KV_PAIRS  # the curriculum's pair count
    for q in supervised[0].nonzero().flatten().tolist():
        prefix = torch.cat([kv.ids[:, :first], kv.ids[:, q : q + 1]], dim=1)
        assert torch.equal(kv_answer(prefix, first // 2), kv.targets[:, q])


@pytest.mark.parametrize("name,task", [("llama", "kv"), ("bert", "keyword")])
def test_one_training_step_runs(name, task):
    wrapper = EmbedsModel(build_model(name, seed=0), name)
    opt = torch.optim.AdamW(wrapper.parameters(), lr=1e-3)
    spec = TASKS[task]
    batch = (spec.sample_train or spec.sample)(8, torch.Generator().manual_seed(0), 0.1)
    before = [p.detach().clone() for p in wrapper.parameters()]
    loss = train_step(wrapper, batch, opt)
    assert math.isfinite(loss) and loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, wrapper.parameters()))
    with torch.no_grad():
        assert float(batch_loss(wrapper.eval(), batch)) > 0


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_metrics_are_well_formed_on_an_untrained_model(name):
    task = "kv" if name == "llama" else "keyword"
    batch = make_batch(task, 6, seed=0)
    ex = Explained(build_model(name, seed=0), name, batch.ids)
    table = variants()
    runs = []
    for variant in ("input_x_gradient (Libra)", "fullgrad (plain)", "fullgrad (Libra)", "gradcam+ (Libra)",
                    "rollout", "random"):
        relevance, completeness = table[variant](ex)
        assert relevance.shape == batch.ids.shape and bool(torch.isfinite(relevance).all()), variant
        scores = score_relevance(ex.wrapper, ex.embeds, relevance, ex.pred, batch.evidence, completeness)
        for key in ("mif", "lif", "ap", "ap_abs", "neg_evidence"):
            assert 0.0 <= scores[key] <= 1.0, (variant, key, scores[key])
        assert scores["srg"] == pytest.approx(scores["lif"] - scores["mif"])
        assert (scores["ce"] is None) == (completeness is None)
        runs.append({"rows": {variant: scores}})
    assert set(aggregate(runs)) == {next(iter(r["rows"])) for r in runs}


def test_evidence_ap_ranks_a_perfect_relevance_first():
    batch = make_batch("keyword", 6, seed=0)
    ex = Explained(build_model("bert", seed=0), "bert", batch.ids)
    perfect = score_relevance(ex.wrapper, ex.embeds, batch.evidence.float(), ex.pred, batch.evidence)
    inverted = score_relevance(ex.wrapper, ex.embeds, -batch.evidence.float(), ex.pred, batch.evidence)
    assert perfect["ap"] == 1.0 and inverted["ap"] < 0.2


def test_token_relevance_matches_input_x_gradient_by_hand():
    batch = make_batch("keyword", 3, seed=0)
    ex = Explained(build_model("bert", seed=0), "bert", batch.ids)
    scores, _ = token_relevance(ex.balanced, ex.embeds, ex.pred, "input_x_gradient", libra=False)
    embeds = ex.embeds.clone().requires_grad_(True)
    ex.wrapper(embeds).gather(1, ex.pred[:, None]).sum().backward()
    assert torch.allclose(scores, (embeds * embeds.grad).sum(-1).detach(), atol=1e-5)


def test_rollout_reads_the_explained_row():
    batch = make_batch("kv", 2, seed=0)
    wrapper = EmbedsModel(build_model("llama", seed=0), "llama")
    rel = rollout_relevance(wrapper, wrapper.embed(batch.ids))
    # a causal model's last row is a distribution over all positions
    assert rel.shape == batch.ids.shape and torch.allclose(rel.sum(1), torch.ones(2), atol=1e-5)
