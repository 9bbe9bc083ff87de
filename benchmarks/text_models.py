"""The language models of the text speed benchmark (``benchmarks/text_speed.py``).

Each family is built from a config with random weights, in two sizes: ``tiny`` (CPU, seconds) and
``1b`` (about a billion parameters, for a GPU). The same module runs under two environments — the
project's (transformers 5.x, libra_fx) and lxt's (transformers 4.52, see ``lxt_env.sh``) — so it
imports nothing but torch and transformers, and only the config keys both versions accept.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Family:
    """A Hugging Face model family as the benchmark builds it.

    Attributes:
        name: short name used on the command line and in the tables.
        model_class: the ``transformers`` class explained (a language-model head).
        config_class: its config class.
        tiny: config keys of the tiny CPU model.
        big: config keys of the ~1B model (overrides ``tiny``'s keys).
        lxt_module: the ``transformers.models`` module lxt patches.
        lxt_cp: whether lxt ships a CP-LRP patch map for it (BERT has AttnLRP only).
    """

    name: str
    model_class: str
    config_class: str
    tiny: dict
    big: dict = field(default_factory=dict)
    lxt_module: str = ""
    lxt_cp: bool = True


_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096)

FAMILIES = {f.name: f for f in (
    Family("llama", "LlamaForCausalLM", "LlamaConfig", _DECODER,
           dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000), "llama"),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", _DECODER,
           dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                num_key_value_heads=2, vocab_size=32000), "qwen2"),
    Family("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig", dict(_DECODER, head_dim=16),
           dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                num_key_value_heads=1, head_dim=256, vocab_size=32000), "gemma3"),
    Family("gpt2", "GPT2LMHeadModel", "GPT2Config",
           dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=4096, bos_token_id=0,
                eos_token_id=0),
           dict(n_embd=1600, n_layer=48, n_head=25, vocab_size=32000), "gpt2"),
    Family("bert", "BertForMaskedLM", "BertConfig",
           dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=256, max_position_embeddings=4096),
           dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                vocab_size=30522), "bert", lxt_cp=False),
)}

SIZES = ("tiny", "1b")


def config_of(family: Family, size: str):
    """The ``transformers`` config of ``family`` at ``size`` (``"tiny"`` or ``"1b"``), sdpa attention.

    Args:
        family: an entry of :data:`FAMILIES`.
        size: ``"tiny"`` or ``"1b"``.

    Returns:
        A ``PretrainedConfig``.

    Example:
        >>> config_of(FAMILIES["llama"], "tiny").hidden_size
        64
    """
    import transformers
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    keys = dict(family.tiny, **(family.big if size == "1b" else {}))
    config = getattr(transformers, family.config_class)(**keys)
    # both transformers versions read this private field; the public kwarg differs between them
    config._attn_implementation = "sdpa"
    return config


def build(name: str, size: str = "tiny", seed: int = 0) -> nn.Module:
    """A randomly initialised model of family ``name`` in eval mode, parameters frozen.

    Biases are drawn at random too (N(0, 0.02)): ``transformers`` initialises them to zero, which
    would make every bias term of FullGrad, and the relevance LRP leaves on biases, vanish.

    Args:
        name: a key of :data:`FAMILIES`.
        size: ``"tiny"`` or ``"1b"``.
        seed: ``torch.manual_seed`` before initialisation.

    Returns:
        The ``transformers`` model.

    Example:
        >>> type(build("gpt2")).__name__
        'GPT2LMHeadModel'
    """
    import transformers
    family = FAMILIES[name]
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config_of(family, size))
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias"):
                param.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


class LastTokenLogits(nn.Module):
    """``inputs_embeds`` (B, L, D) → logits (B, V) of the token predicted at the last position.

    The explained model: every method gets the same embeddings and explains one logit of it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # decoders take use_cache (off: no KV cache to build); transformers 4.52's BERT rejects it
        self.kwargs = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=embeds, **self.kwargs).logits[:, -1].float()


def token_embeddings(model: nn.Module, length: int, seed: int = 0) -> torch.Tensor:
    """Embeddings (1, length, D) of random token ids — the benchmark's input.

    The ids depend only on ``seed``, ``length`` and the vocabulary size, so both environments explain
    the same sequence; the embedding lookup itself is not timed (it is the same for every method).

    Args:
        model: a model from :func:`build`.
        length: sequence length.
        seed: seed of the id generator.

    Returns:
        A detached float tensor on the model's device.

    Example:
        >>> token_embeddings(build("llama"), 8).shape
        torch.Size([1, 8, 64])
    """
    table = model.get_input_embeddings()
    generator = torch.Generator().manual_seed(seed * 100_003 + length)
    ids = torch.randint(table.num_embeddings, (1, length), generator=generator)
    with torch.no_grad():
        return table(ids.to(table.weight.device)).detach()


def weights_file(cache: Path, name: str, size: str) -> Path:
    """Where the driver stores a model's weights so the lxt environment loads the same ones."""
    return Path(cache) / f"{name}-{size}.weights.pt"


def load_weights(model: nn.Module, path: Path) -> list[str]:
    """Load a state dict saved by the other environment; returns keys it could not place.

    Buffers that one transformers version keeps and the other recomputes (rotary frequencies,
    causal masks) may be missing on either side; the caller reports what is left.

    Args:
        model: the freshly built model.
        path: a file written by ``torch.save(model.state_dict())``.

    Returns:
        The missing and unexpected parameter keys (buffers excluded).

    Example:
        >>> load_weights(build("bert"), Path("bert-tiny.weights.pt"))  # doctest: +SKIP
        []
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    params = {n for n, _ in model.named_parameters()}
    tied = {n for n in result.missing_keys if n.endswith("lm_head.weight") or "decoder.weight" in n}
    return [k for k in result.missing_keys if k in params and k not in tied] + \
        [k for k in result.unexpected_keys if k.endswith("weight") and "rotary" not in k]
