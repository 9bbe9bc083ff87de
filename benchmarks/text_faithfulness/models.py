"""The two tiny Hugging Face models of the text benchmark, built from configs (random init).

``llama``: a Llama-style causal LM (``LlamaConfig``: RMSNorm, RoPE, SwiGLU MLP) on the ``kv`` task.
``bert``: a BERT-style encoder classifier (``BertForSequenceClassification``) on the ``keyword`` task.
Both use eager attention: attention rollout reads the attention weights, and lxt patches the eager path.
Only config keys that transformers 4.52 (lxt's environment) also understands are used, so a checkpoint
loads in both environments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from .data import CLS, TASKS


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model.

    Attributes:
        task: key of :data:`benchmarks.text_faithfulness.data.TASKS`.
        kind: ``"causal_lm"`` (explain the next-token logit at the last position) or ``"classifier"``.
        config: ``() -> dict`` of config keyword arguments.
        prefix: token ids the model sees before the content (BERT's ``[CLS]``), never deleted or scored.
    """

    task: str
    kind: str
    config: Callable[[], dict]
    prefix: tuple[int, ...] = ()


def _llama_config() -> dict:
    return dict(vocab_size=TASKS["kv"].vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)


def _bert_config() -> dict:
    return dict(vocab_size=TASKS["keyword"].vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, num_labels=TASKS["keyword"].num_labels,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


MODELS: dict[str, ModelSpec] = {
    "llama": ModelSpec("kv", "causal_lm", _llama_config),
    "bert": ModelSpec("keyword", "classifier", _bert_config, prefix=(CLS,)),
}


#: model -> (transformers family, config class, model class)
_CLASSES = {"llama": ("llama", "LlamaConfig", "LlamaForCausalLM"),
            "bert": ("bert", "BertConfig", "BertForSequenceClassification")}


def _classes(name: str):
    # Looked up in the modeling module at call time, not through ``transformers``' lazy top-level
    # names: lxt's BERT rules replace the classes of that module, and must be the ones built.
    import importlib
    family, config_name, model_name = _CLASSES[name]
    config = importlib.import_module(f"transformers.models.{family}.configuration_{family}")
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    return getattr(config, config_name), getattr(modeling, model_name)


def build_model(name: str, seed: int) -> nn.Module:
    """A randomly initialised model ``name`` (eval mode), initialised from ``seed``.

    Args:
        name: key of :data:`MODELS`.
        seed: torch seed for the initialisation.

    Returns:
        The Hugging Face model with eager attention.

    Example:
        >>> build_model("bert", seed=0).config.hidden_size
        64
    """
    import torch
    config_cls, model_cls = _classes(name)
    config = config_cls(**MODELS[name].config())
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return model_cls(config).eval()
