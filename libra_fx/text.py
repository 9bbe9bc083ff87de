"""Language models: token ids in, per-token relevance out (``attribute(model, input_ids=...)``).

A Hugging Face ``transformers`` model is explained through its input embeddings: the ids are looked
up with ``model.get_input_embeddings()`` and the model is called as
``model(inputs_embeds=E, attention_mask=M, position_ids=P, use_cache=False)`` (:class:`EmbeddingsForward`),
so ``E`` is the attributed input and position/type embeddings added to it are bias terms.

Design choices (see ``README.text.md``):

* **Capture once** (:class:`TextModel`): ``torch.export`` with the batch and sequence dimensions
  dynamic, so one balanced graph serves every ``(B, T)``. The first call at a new shape checks that
  graph's forward against the model's; where it differs or fails (a model that specialises on a
  length), that shape gets its own static capture, kept in ``TextModel.captures``.
* **Padding** left or right: position ids are ``cumsum(mask) − 1``, so a padded row computes what
  the unpadded one does; padded positions get 0 relevance.
* **Targets** (:func:`resolve_target`): an int / ``(B,)`` ids → the next-token logit at the last
  real position (a class logit for sequence classifiers); a list / ``(B, K)`` of tokens → teacher
  forcing: the tokens are appended and each one's logit is explained at the position that predicts
  it, K targets from ONE forward and one batched backward (``is_grads_batched``), giving ``(B, K, T)``
  relevance; :class:`Contrast` → logit difference; ``None`` → the model's own prediction.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from .attention_maps import attention_maps
from .attribution import Attribution, run_method
from .context import Context
from .errors import InputError, TargetError
from .geometry import Geometry
from .methods import METHODS, Partial
from .methods.attention import rollout_matrix
from .pipeline import transform
from .targets import RowTarget, first_tensor

#: the placeholder that is attributed (the HF keyword the embeddings are passed as)
ATTRIBUTED = ("inputs_embeds",)


# --------------------------------------------------------------------------- the captured module


class EmbeddingsForward(nn.Module):
    """``model`` called on embeddings: ``forward(inputs_embeds, attention_mask[, position_ids])``.

    Only keywords the model's ``forward`` accepts are passed (``position_ids``, ``use_cache``).
    The user's model is held, not changed.

    Example:
        >>> wrapper = EmbeddingsForward(hf_model)
        >>> wrapper(hf_model.get_input_embeddings()(ids), torch.ones_like(ids)).logits.shape
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        accepted = inspect.signature(model.forward).parameters
        self.takes_positions = "position_ids" in accepted
        self.takes_cache = "use_cache" in accepted

    def forward(self, inputs_embeds, attention_mask, position_ids=None):
        extra = {"use_cache": False} if self.takes_cache else {}
        if self.takes_positions:
            extra["position_ids"] = position_ids
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding: ``cumsum(mask) − 1`` (0 on padding), as HF ``generate`` does.

    Args:
        mask: ``(B, T)`` attention mask, 1 for tokens.

    Returns:
        ``(B, T)`` long positions.

    Example:
        >>> position_ids(torch.tensor([[0, 0, 1, 1], [1, 1, 0, 1]]))
        tensor([[0, 0, 0, 1],
                [0, 1, 1, 2]])
    """
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (left or right padding).

    Args:
        mask: ``(B, T)`` attention mask.

    Returns:
        ``(B,)`` long indices.

    Example:
        >>> last_positions(torch.tensor([[0, 1, 1], [1, 1, 0]]))
        tensor([2, 1])
    """
    return mask.shape[1] - 1 - mask.long().flip(-1).argmax(-1)


def is_language_model(model: nn.Module) -> bool:
    """Whether ``model`` predicts tokens (has an output embedding / LM head), not classes.

    Args:
        model: a ``transformers`` model.

    Returns:
        ``True`` for causal/masked LMs, ``False`` for classifiers.

    Example:
        >>> is_language_model(tiny_model("tiny-llama")[0]), is_language_model(tiny_model("bert")[0])
        (True, False)
    """
    getter = getattr(model, "get_output_embeddings", None)
    return callable(getter) and getter() is not None


class TextModel:
    """A Hugging Face model plus its balanced captures, reused across calls and sequence lengths.

    Args:
        model: a ``transformers`` model in eval mode (not modified).
        passes: passes for :func:`libra_fx.transform` (all by default).

    Attributes:
        captures: ``"dynamic"`` → the graph for every shape (``None`` if the dynamic capture
            failed), ``(B, T)`` → a static graph for a shape the dynamic one does not serve.

    Example:
        >>> lm = TextModel(model)
        >>> a = libra_fx.attribute(lm, input_ids=ids8, target=5, method="fullgrad")
        >>> b = libra_fx.attribute(lm, input_ids=ids13, target=5, method="fullgrad")  # no new capture
        >>> list(lm.captures)
        ['dynamic']
    """

    def __init__(self, model: nn.Module, passes: Optional[Sequence[str]] = None):
        if not callable(getattr(model, "get_input_embeddings", None)):
            raise InputError(f"{type(model).__name__}: input_ids need a Hugging Face model with "
                             "get_input_embeddings(); pass embeddings as inputs= otherwise")
        self.model = model
        self.wrapper = EmbeddingsForward(model)
        self.passes = passes
        self.captures: dict[Any, Optional[torch.nn.Module]] = {}
        self._served: set[tuple[int, int]] = set()

    @property
    def is_lm(self) -> bool:
        return is_language_model(self.model)

    def inputs(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(embeddings, mask, positions)`` for the graph; embeddings are detached (the input)."""
        with torch.no_grad():
            embeds = self.model.get_input_embeddings()(input_ids)
        return embeds, mask.long(), position_ids(mask)

    def example_inputs(self, batch: int = 2, length: int = 8) -> tuple[torch.Tensor, ...]:
        """Inputs of random ids (batch and length ≥ 2, so they can be marked dynamic)."""
        vocab = self.model.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
        return self.inputs(ids.to(self._device), torch.ones_like(ids).to(self._device))

    @property
    def _device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _capture(self, inputs: tuple, dynamic: bool) -> nn.Module:
        example = tuple(t.clone() for t in inputs)
        if dynamic:
            for tensor in example:  # read by torch.export (non-strict) as dynamic batch and length
                torch._dynamo.mark_dynamic(tensor, 0)
                torch._dynamo.mark_dynamic(tensor, 1)
        return transform(self.wrapper, example, passes=self.passes, inputs=ATTRIBUTED)

    def graph(self, inputs: tuple) -> nn.Module:
        """The balanced graph serving ``inputs``' shape (captured on first need, see the class doc)."""
        shape = tuple(inputs[0].shape[:2])
        if shape in self.captures:
            return self.captures[shape]
        if "dynamic" not in self.captures:
            try:
                self.captures["dynamic"] = self._capture(self.example_inputs(), dynamic=True)
            except Exception:  # the model specialises on a size: static captures per shape instead
                self.captures["dynamic"] = None
        dynamic = self.captures["dynamic"]
        if dynamic is not None and (shape in self._served or self._serves(dynamic, inputs)):
            self._served.add(shape)
            return dynamic
        self.captures[shape] = self._capture(inputs, dynamic=False)
        return self.captures[shape]

    def _serves(self, gm: nn.Module, inputs: tuple) -> bool:
        """Whether the dynamic graph computes the model's logits exactly at this shape."""
        try:
            with torch.enable_grad():  # as in attribution: some kernels differ under no_grad
                ours, theirs = gm(*inputs), self.wrapper(*inputs)
            return torch.equal(first_tensor(ours), first_tensor(theirs))
        except Exception:
            return False


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Contrast:
    """Explain ``logit(token) − logit(foil)`` (ints or ``(B,)`` ids; classes for classifiers).

    Example:
        >>> libra_fx.attribute(lm, input_ids=ids, target=Contrast(token=42, foil=17))
    """

    token: Union[int, torch.Tensor]
    foil: Union[int, torch.Tensor]


@dataclass
class TokenTarget(RowTarget):
    """Logits read at ``positions`` (B, K) for ``tokens`` (B, K), minus ``foils`` when given.

    For a classifier (``(B, C)`` logits) ``positions`` are ignored and ``tokens`` are classes.
    """

    positions: torch.Tensor
    tokens: torch.Tensor
    foils: Optional[torch.Tensor] = None

    @property
    def per_row(self) -> int:
        return self.tokens.shape[1]

    def _pick(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits.gather(-1, ids.unsqueeze(-1).to(logits.device)).squeeze(-1)

    def __call__(self, output: Any) -> torch.Tensor:
        logits = first_tensor(output)
        if logits.dim() == 3:
            index = self.positions.to(logits.device).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
            logits = logits.gather(1, index)
        else:
            logits = logits.unsqueeze(1).expand(-1, self.per_row, -1)
        score = self._pick(logits, self.tokens)
        if self.foils is not None:
            score = score - self._pick(logits, self.foils)
        return score if self.per_row > 1 else score[:, 0]

    def _map(self, fn: Callable) -> "TokenTarget":
        foils = fn(self.foils) if self.foils is not None else None
        return TokenTarget(fn(self.positions), fn(self.tokens), foils)

    def repeat_interleave(self, repeats: int) -> "TokenTarget":
        return self._map(lambda t: t.repeat_interleave(repeats, 0))

    def __getitem__(self, rows: slice) -> "TokenTarget":
        return self._map(lambda t: t[rows])


def _per_sample(value: Any, batch: int, what: str) -> torch.Tensor:
    """An int or (B,) ids as a (B, 1) long tensor."""
    ids = torch.as_tensor(value).long().reshape(-1)
    if ids.numel() == 1:
        ids = ids.expand(batch)
    if ids.numel() != batch:
        raise TargetError(f"{what}: expected an int or {batch} ids (one per sample), got {ids.numel()}")
    return ids.reshape(batch, 1)


def _continuation(value: Any, batch: int) -> torch.Tensor:
    tokens = torch.as_tensor(value).long()
    tokens = tokens.unsqueeze(0).expand(batch, -1) if tokens.dim() == 1 else tokens
    if tokens.dim() != 2 or tokens.shape[0] != batch or tokens.shape[1] == 0:
        raise TargetError(f"a continuation target is a list of token ids or a ({batch}, K) tensor, "
                          f"got shape {tuple(tokens.shape)}")
    return tokens


@dataclass
class Resolved:
    """A text target made concrete: the ids/mask to run and the target object."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    target: Any
    positions: torch.Tensor  # (B, K) the query position of each explained score
    tokens: Optional[torch.Tensor] = None  # (B, K) explained ids (None for a callable)
    continuation: bool = False


def _prediction(lm: TextModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's own top-1 next token (LM) or class (classifier), ``(B,)``."""
    with torch.no_grad():
        logits = first_tensor(lm.wrapper(*lm.inputs(ids, mask)))
    if logits.dim() == 3:
        logits = logits[torch.arange(ids.shape[0]), last_positions(mask)]
    return logits.argmax(-1)


def resolve_target(lm: TextModel, ids: torch.Tensor, mask: torch.Tensor, target: Any) -> Resolved:
    """Turn a user target into what to run (see the module docstring for the semantics).

    Args:
        lm: the text model.
        ids, mask: ``(B, T)`` token ids and attention mask.
        target: ``None``, an int, ``(B,)`` ids, a list or ``(B, K)`` tensor of continuation tokens,
            a :class:`Contrast`, or a callable ``output -> (B,)``.

    Returns:
        :class:`Resolved`.

    Raises:
        TargetError: a continuation for a classifier, or ids of the wrong shape.
    """
    batch, last = ids.shape[0], last_positions(mask).unsqueeze(1)
    if callable(target) and not isinstance(target, (torch.Tensor, RowTarget)):
        return Resolved(ids, mask, target, last)
    if isinstance(target, RowTarget):
        return Resolved(ids, mask, target, getattr(target, "positions", last))
    if target is None:
        target = _prediction(lm, ids, mask)
    if isinstance(target, Contrast):
        tokens, foils = _per_sample(target.token, batch, "Contrast.token"), _per_sample(target.foil, batch, "Contrast.foil")
        return Resolved(ids, mask, TokenTarget(last, tokens, foils), last, tokens)
    if isinstance(target, (list, tuple)) or (isinstance(target, torch.Tensor) and target.dim() == 2):
        return _teacher_forced(lm, ids, mask, _continuation(target, batch))
    tokens = _per_sample(target, batch, "target")
    return Resolved(ids, mask, TokenTarget(last, tokens), last, tokens)


def _teacher_forced(lm: TextModel, ids, mask, tokens) -> Resolved:
    """Append the continuation (all but its last token) and read token k at the position before it."""
    if not lm.is_lm:
        raise TargetError(f"{type(lm.model).__name__} is a classifier: a list target (continuation) "
                          "needs a language model; pass a class index")
    batch, length, count = ids.shape[0], ids.shape[1], tokens.shape[1]
    appended = tokens[:, :-1].to(ids.device)
    full_ids = torch.cat([ids, appended], 1)
    full_mask = torch.cat([mask, torch.ones_like(appended)], 1)
    after = torch.arange(length, length + count - 1, device=ids.device).expand(batch, -1)
    positions = torch.cat([last_positions(mask).unsqueeze(1), after], 1)
    return Resolved(full_ids, full_mask, TokenTarget(positions, tokens), positions, tokens, continuation=True)


# --------------------------------------------------------------------------- geometry and methods


@dataclass
class TextGeometry(Geometry):
    """Token sequences: a tensor ``(rows, T, ...)`` is located per token (summed over the rest).

    Rows may be ``B`` or ``B·K`` (several targets per sample), so the batch size is not checked;
    tensors whose second dimension is not ``T`` (attention ``(B, heads, T, T)``) are not located and
    their bias share stays in ``bias_attr`` only.
    """

    length: int = 0

    def locate(self, value: torch.Tensor):
        if value.dim() >= 2 and value.shape[1] == self.length:
            flat = value.unsqueeze(-1) if value.dim() == 2 else value.flatten(2)
            return flat, (1, self.length)
        return None

    def input_piece(self, attr: torch.Tensor) -> Optional[torch.Tensor]:
        located = self.locate(attr)
        return None if located is None else located[0].sum(-1).reshape(attr.shape[0], 1, self.length)


def text_geometry(batch: int, length: int) -> TextGeometry:
    """The geometry of ``(batch, length)`` token inputs: a ``1 × length`` grid, no prefix.

    Args:
        batch, length: the token inputs' shape.

    Returns:
        :class:`TextGeometry`.

    Example:
        >>> text_geometry(2, 5).locate(torch.zeros(2, 5, 8))[0].shape
        torch.Size([2, 5, 8])
    """
    return TextGeometry(batch, None, grid=(1, length), prefix=0, tokens=True, length=length)


def _causal(matrix: torch.Tensor) -> bool:
    upper = torch.ones(matrix.shape[-2:], dtype=torch.bool, device=matrix.device).triu(1)
    return bool((matrix[..., upper].abs() < 1e-12).all())


def _text_query_rows(ctx: Context, matrix: torch.Tensor) -> torch.Tensor:
    """The rows of a ``(B, T, T)`` attention matrix at each explained score's query position:
    the predicting position (LMs, decoder classifiers), or the first token for an encoder
    classifier (its [CLS] pooling)."""
    positions = ctx.options["_positions"].to(matrix.device)
    if not ctx.options["_lm"] and not _causal(matrix):
        positions = torch.zeros_like(positions)
    index = positions.unsqueeze(-1).expand(-1, -1, matrix.shape[-1])
    return matrix.gather(1, index).flatten(0, 1)


def _text_partial(score: torch.Tensor, rows: torch.Tensor) -> Partial:
    return Partial(score, [rows.unsqueeze(1)])


def _finite(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Padded query rows attend to no key (all masked): their softmax is NaN; they hold no weight."""
    return [torch.nan_to_num(m, nan=0.0) for m in maps]


def text_rollout(ctx: Context) -> Partial:
    """Attention rollout Π_l normalise(0.5·mean_heads A_l + 0.5·I), read at the query position."""
    readout = attention_maps(ctx)
    return _text_partial(readout.score, _text_query_rows(ctx, rollout_matrix(_finite(readout.maps))))


def text_raw_attention(ctx: Context) -> Partial:
    """Last layer's attention averaged over heads, read at the query position."""
    readout = attention_maps(ctx)
    return _text_partial(readout.score, _text_query_rows(ctx, _finite(readout.maps)[-1].mean(1)))


#: text variants of methods whose vision form reads a [CLS] row; the rest are shared (``METHODS``)
TEXT_METHODS: dict[str, Callable[[Context], Partial]] = {"rollout": text_rollout, "raw_attention": text_raw_attention}


def text_methods() -> dict[str, Callable[[Context], Partial]]:
    """Every method usable on token sequences.

    Returns:
        name -> method: :data:`~libra_fx.attribution.METHODS` with the text variants of
        :data:`TEXT_METHODS` in place of the vision ones.

    Example:
        >>> "rollout" in text_methods() and "fullgrad" in text_methods()
        True
    """
    return {**METHODS, **TEXT_METHODS}


# --------------------------------------------------------------------------- the entry point


@dataclass
class TextAttribution(Attribution):
    """:class:`~libra_fx.attribution.Attribution` of a text model.

    With one score per sample, ``token_scores`` is ``(B, T)``, ``input_attr`` ``(B, T, D)`` and
    ``score`` ``(B,)``; with a continuation of K tokens they get a K axis after the batch:
    ``(B, K, T)``, ``(B, K, T, D)``, ``(B, K)``. ``T`` counts the prompt plus the appended
    continuation (its last token is only explained, never an input).

    Attributes:
        input_ids: ``(B, T)`` the ids that were run.
        attention_mask: ``(B, T)``; padded positions have 0 relevance.
        target_tokens: ``(B, K)`` explained token ids / classes (``None`` for a callable target).
        target_positions: ``(B, K)`` the position whose logits were read.
        continuation: whether ``target`` was a teacher-forced continuation.
        language_model: whether targets are tokens (``False``: classes of a classifier).
        unplaced_bias: for FullGrad, the bias×gradient share that sits at no token (a classifier's
            pooler and head biases): ``token_scores.sum(-1) + unplaced_bias = score`` (up to the
            completeness error); ``None`` for other methods.
    """

    input_ids: Optional[torch.Tensor] = None
    attention_mask: Optional[torch.Tensor] = None
    target_tokens: Optional[torch.Tensor] = None
    target_positions: Optional[torch.Tensor] = None
    continuation: bool = False
    language_model: bool = True
    unplaced_bias: Optional[torch.Tensor] = None


def _check_ids(input_ids: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.as_tensor(input_ids)
    ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.is_floating_point() or ids.shape[1] == 0:
        raise InputError(f"input_ids must be (B, T) integer token ids, got {tuple(ids.shape)} {ids.dtype}")
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).to(ids.device)
    mask = mask.unsqueeze(0) if mask.dim() == 1 else mask
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    if not bool(mask.bool().any(1).all()):
        raise InputError("attention_mask: every row needs at least one real token")
    return ids.long(), mask.long()


def _check_vocabulary(lm: TextModel, ids: torch.Tensor) -> None:
    size = lm.model.get_input_embeddings().num_embeddings
    bad = ids[(ids < 0) | (ids >= size)]
    if bad.numel():
        raise InputError(f"{type(lm.model).__name__}: token id {int(bad[0])} is out of range for the "
                         f"vocabulary of {size} (a tokenizer of another model?)")


def _shape_rows(value: Optional[torch.Tensor], batch: int, per_row: int, mask: torch.Tensor):
    """``(B·K, T, ...)`` rows → ``(B, T, ...)`` or ``(B, K, T, ...)``, padding set to 0."""
    if value is None:
        return None
    if per_row > 1:
        value = value.reshape(batch, per_row, *value.shape[1:])
    keep = mask.to(value.dtype)[:, None] if per_row > 1 else mask.to(value.dtype)
    return value * keep.reshape(*keep.shape, *[1] * (value.dim() - keep.dim()))


def _per_sample_rows(value: Optional[torch.Tensor], batch: int, per_row: int):
    return value.reshape(batch, per_row) if value is not None and per_row > 1 else value


def attribute_text(model: Union[nn.Module, TextModel], input_ids: Any, attention_mask: Any = None,
                   target: Any = None, method: str = "fullgrad", libra: bool = True,
                   blocks: Optional[Sequence[str]] = None, compiled: bool = False,
                   **options: Any) -> TextAttribution:
    """Per-token attribution of a Hugging Face model's score (``libra_fx.attribute(..., input_ids=...)``).

    Args:
        model: a ``transformers`` model, or a :class:`TextModel` (keeps its capture across calls;
            a bare model is captured on every call).
        input_ids: ``(B, T)`` (or ``(T,)``) token ids.
        attention_mask: ``(B, T)``, 1 for tokens, 0 for padding (left or right); all ones by default.
        target: see :func:`resolve_target`.
        method: a name in :func:`text_methods` (``input_x_gradient``, ``integrated_gradients``,
            ``fullgrad``, ``fullgrad+``, ``gradcam+``, ``rollout``, ...).
        libra: balanced graph (``True``) or the plain trace of the same capture (``False``).
        blocks: block module paths (default: discovered, the decoder/encoder layers).
        compiled: ``torch.compile`` the graph (one score per sample only).
        **options: method options (``steps``, ``baseline``, ``internal_batch_size`` for IG).

    Returns:
        :class:`TextAttribution`.

    Raises:
        UnknownMethodError, InputError, TargetError: bad arguments.

    Example:
        >>> from libra_fx.hf import tiny_model
        >>> model, tok = tiny_model("tiny-llama")
        >>> ids = torch.tensor([tok.encode("the cat")])
        >>> r = attribute_text(model, ids, target=[5, 6, 7], method="input_x_gradient")
        >>> r.token_scores.shape
        torch.Size([1, 3, 9])
    """
    from .validation import check_method

    check_method(method, text_methods())
    lm = model if isinstance(model, TextModel) else TextModel(model)
    ids, mask = _check_ids(input_ids, attention_mask)
    _check_vocabulary(lm, ids)
    resolved = resolve_target(lm, ids.to(lm._device), mask.to(lm._device), target)
    inputs = lm.inputs(resolved.input_ids, resolved.mask)
    gm = lm.graph(inputs)
    gm = gm if libra else gm.libra_report.traced
    batch, length = resolved.input_ids.shape
    options = {**options, "_positions": resolved.positions, "_lm": lm.is_lm}
    result = run_method(gm, inputs, resolved.target, method, text_geometry(batch, length), libra, blocks,
                        compiled, options, attributed=ATTRIBUTED, methods=text_methods())
    return _text_result(result, resolved, lm.is_lm)


def _text_result(result: Attribution, resolved: Resolved, language_model: bool) -> TextAttribution:
    batch, per_row = resolved.input_ids.shape[0], resolved.positions.shape[1] if resolved.continuation else 1
    mask = resolved.mask
    unplaced = None
    if result.bias_attr is not None and result.input_attr is not None:
        placed = result.token_scores.sum(-1)
        unplaced = _per_sample_rows(result.input_attr.flatten(1).sum(1) + result.bias_attr - placed, batch, per_row)
    return TextAttribution(
        input_attr=_shape_rows(result.input_attr, batch, per_row, mask),
        token_scores=_shape_rows(result.token_scores, batch, per_row, mask),
        image_map=None,
        bias_attr=_per_sample_rows(result.bias_attr, batch, per_row),
        score=_per_sample_rows(result.score, batch, per_row),
        completeness_error=_per_sample_rows(result.completeness_error, batch, per_row),
        method=result.method, libra=result.libra, blocks=result.blocks,
        input_ids=resolved.input_ids, attention_mask=mask, target_tokens=resolved.tokens,
        target_positions=resolved.positions, continuation=resolved.continuation,
        language_model=language_model, unplaced_bias=unplaced,
    )


def greedy_continuation(model: Union[nn.Module, TextModel], input_ids: torch.Tensor, steps: int,
                        attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, steps)`` tokens the model generates greedily (full recompute per step, no cache).

    Example:
        >>> greedy_continuation(model, ids, 3).shape
        torch.Size([1, 3])
    """
    lm = model if isinstance(model, TextModel) else TextModel(model)
    ids, mask = _check_ids(input_ids, attention_mask)
    produced = []
    for _ in range(steps):
        token = _prediction(lm, ids, mask)
        produced.append(token)
        ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones_like(token)[:, None]], 1)
    return torch.stack(produced, 1)


def audit_text(lm: TextModel, length: int = 8, batch: int = 2):
    """:func:`libra_fx.audit` for a text model: rewrites, unbalanced ops and FullGrad completeness
    before/after, measured on random ids with only the embeddings attributed (position and type
    embeddings are bias terms, as in :func:`attribute_text`) and the model's own prediction as target.

    Args:
        lm: the text model (its ``passes`` apply).
        length, batch: size of the random example.

    Returns:
        :class:`libra_fx.auditing.AuditReport`.

    Example:
        >>> report = audit_text(TextModel(tiny_model("gpt_neox")[0]))
        >>> report.completeness_after < 1e-4
        True
    """
    from .auditing import AuditReport

    ids = torch.randint(0, lm.model.get_input_embeddings().num_embeddings, (batch, length),
                        generator=torch.Generator().manual_seed(0)).to(lm._device)
    report = lm.graph(lm.inputs(ids, torch.ones_like(ids))).libra_report
    errors = [float(attribute_text(lm, ids, target=None, method="fullgrad", libra=flag).completeness_error.max())
              for flag in (False, True)]
    return AuditReport(report.model_name, report.rewrites, report.unbalanced, errors[0], errors[1], report.timings)
