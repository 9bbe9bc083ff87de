"""Hugging Face models for the ``hf:`` spec: tiny random ones built offline, or hub checkpoints.

* ``hf:tiny-llama`` — a built-in Llama-style config (2 layers, hidden 64, random weights) with the
  character tokenizer below: works with no network and no download.
* ``hf:<model_type>`` (``hf:gpt2``, ``hf:bert``, ``hf:gpt_neox`` ...) — ``AutoConfig.for_model`` with
  small sizes, random weights, the character tokenizer. Encoder-only types get a 2-class
  sequence-classification head, the others a causal LM head.
* ``hf:<hub name> --pretrained`` — ``from_pretrained`` for model and tokenizer (downloads).
"""
from __future__ import annotations

import difflib
import string
from typing import Any, Sequence

import torch
import torch.nn as nn

from .errors import LibraError

#: sizes every tiny random config gets (names HF configs alias: GPT-2's n_embd ← hidden_size ...)
TINY_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=256)

#: model types explained as classifiers (no causal LM head that makes sense offline)
ENCODER_TYPES = frozenset(("bert", "roberta", "distilbert", "electra", "xlm-roberta", "camembert",
                           "modernbert", "deberta", "deberta-v2", "albert", "mpnet"))

#: built-in names -> (model_type, extra config)
BUILTIN = {"tiny-llama": ("llama", {})}


class CharTokenizer:
    """A character-level tokenizer built in code: ``<pad>``, ``<unk>``, ``<bos>`` and printable ASCII.

    Implements the few ``transformers`` tokenizer methods libra_fx uses: ``encode``, ``decode``,
    ``convert_ids_to_tokens`` and ``__len__``.

    Example:
        >>> tok = CharTokenizer()
        >>> tok.decode(tok.encode("the cat"))
        'the cat'
    """

    pad_token_id, unk_token_id, bos_token_id = 0, 1, 2

    def __init__(self, alphabet: str = string.printable[:95]):
        self.vocab = ["<pad>", "<unk>", "<bos>", *alphabet]
        self.index = {token: i for i, token in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.index.get(c, self.unk_token_id) for c in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[int(i)] if 0 <= int(i) < len(self.vocab) else "<unk>" for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(t for t in self.convert_ids_to_tokens(ids) if not (t.startswith("<") and t.endswith(">")))


def tiny_config(model_type: str, vocab_size: int, **overrides: Any):
    """A small random-weight config of ``model_type`` (``AutoConfig.for_model`` with :data:`TINY_SIZES`).

    Example:
        >>> tiny_config("gpt2", 98).n_embd
        64
    """
    from transformers import AutoConfig

    sizes = {**TINY_SIZES, "vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 2,
             **overrides}
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise LibraError(f"unknown hf model type {model_type!r}{hint} (built in: {', '.join(BUILTIN)}; "
                         "a hub name needs --pretrained)")
    return AutoConfig.for_model(model_type, **sizes)


def model_head(config) -> type:
    """The auto class for a config: sequence classification for encoder-only types, else causal LM.

    Args:
        config: a ``transformers`` config.

    Returns:
        ``AutoModelForSequenceClassification`` or ``AutoModelForCausalLM``.

    Example:
        >>> model_head(tiny_config("bert", 98)).__name__
        'AutoModelForSequenceClassification'
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if config.model_type in ENCODER_TYPES else AutoModelForCausalLM


def tiny_model(name: str = "tiny-llama", seed: int = 0) -> tuple[nn.Module, CharTokenizer]:
    """A tiny random model and its character tokenizer, built offline.

    Args:
        name: ``tiny-llama`` or a ``transformers`` model type (``gpt2``, ``bert``, ``gpt_neox``...).
        seed: the weights' random seed.

    Returns:
        ``(model in eval mode, tokenizer)``.

    Example:
        >>> model, tok = tiny_model("tiny-llama")
        >>> type(model).__name__
        'LlamaForCausalLM'
    """
    model_type, extra = BUILTIN.get(name, (name, {}))
    tokenizer = CharTokenizer()
    config = tiny_config(model_type, len(tokenizer), **extra)
    head = model_head(config)
    torch.manual_seed(seed)
    try:
        model = head.from_config(config)
    except ValueError as exc:
        raise LibraError(f"hf:{name}: {type(config).__name__} has no {head.__name__[9:]} head: "
                         f"{str(exc).splitlines()[0]}") from None
    return model.eval(), tokenizer


def pretrained_model(name: str) -> tuple[nn.Module, Any]:
    """``from_pretrained`` model (causal LM, else sequence classifier) and tokenizer (downloads).

    Args:
        name: a hub name (``gpt2``, ``Qwen/Qwen2.5-0.5B``) or a local folder.

    Returns:
        ``(model in eval mode, tokenizer)``.

    Raises:
        LibraError: offline, unknown name, or no weights.

    Example:
        >>> model, tok = pretrained_model("gpt2")  # doctest: +SKIP (downloads)
    """
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name)
        model = model_head(config).from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LibraError(f"cannot load hf:{name} (pretrained weights unavailable or offline?): {first}") from None
    return model.eval(), tokenizer
