"""Views of a :class:`~libra_fx.text.TextAttribution`: coloured tokens in the terminal (rich), a
self-contained HTML page (prompt tokens × explained tokens heat table, no external assets) and JSON.

Colours are signed: red for positive relevance, blue for negative, each explained token's row scaled
by its own largest magnitude (so rows are comparable in shape, not in size: the numbers are in the
JSON and in each cell's tooltip).
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence


@dataclass
class TextRow:
    """One explained score: its label and the relevance of each visible token.

    Attributes:
        label: what was explained (``"→ 'a'"``, ``"class 1"``).
        tokens: the token strings it is attributed to (padding dropped).
        relevance: one float per token.
        score: the explained logit (or difference).
        completeness_error: relative FullGrad error, when the method has one.
    """

    label: str
    tokens: list[str]
    relevance: list[float]
    score: float
    completeness_error: Optional[float] = None


def _token_text(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [t.replace("Ġ", " ").replace("▁", " ") for t in tokens]


def rows(result, tokenizer: Any, sample: int = 0) -> list[TextRow]:
    """The explained scores of one sample as :class:`TextRow` s (teacher forcing: one per token).

    Each row lists the tokens that precede the position the logits were read at (the prompt and the
    continuation so far); padded positions are dropped.

    Args:
        result: a :class:`~libra_fx.text.TextAttribution`.
        tokenizer: anything with ``convert_ids_to_tokens``.
        sample: which batch row.

    Returns:
        One row per explained score.

    Example:
        >>> [r.label for r in rows(result, tok)]
        ["→ 'a'", "→ 't'"]
    """
    scores = result.token_scores[sample]
    scores = scores.unsqueeze(0) if scores.dim() == 1 else scores
    keep = result.attention_mask[sample].bool()
    positions = result.target_positions[sample]
    values = result.score[sample].reshape(-1)
    errors = result.completeness_error[sample].reshape(-1) if result.completeness_error is not None else None
    out = []
    for k in range(scores.shape[0]):
        # for teacher forcing, later tokens are the continuation itself (zero by causality): not shown
        visible = keep.clone()
        if result.continuation:
            visible[int(positions[k]) + 1:] = False
        ids = result.input_ids[sample][visible]
        out.append(TextRow(_label(result, tokenizer, sample, k), _token_text(tokenizer, ids),
                           [float(v) for v in scores[k][visible]], float(values[k]),
                           None if errors is None else float(errors[k])))
    return out


def _label(result, tokenizer, sample: int, k: int) -> str:
    if result.target_tokens is None:
        return "target"
    token = int(result.target_tokens[sample, k])
    return f"→ {_token_text(tokenizer, [token])[0]!r}" if result.language_model else f"class {token}"


# --------------------------------------------------------------------------- terminal


def _style(value: float, scale: float) -> str:
    level = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    fade = int(255 * (1 - level))
    colour = f"rgb(255,{fade},{fade})" if value >= 0 else f"rgb({fade},{fade},255)"
    return f"black on {colour}"


def terminal_text(row: TextRow):
    """A rich ``Text`` of the row's tokens on red (positive) / blue (negative) backgrounds.

    Args:
        row: one explained score.

    Returns:
        ``rich.text.Text``: the label, then each token styled by its relevance.

    Example:
        >>> Console().print(terminal_text(rows(result, tok)[0]))
    """
    from rich.text import Text

    scale = max((abs(v) for v in row.relevance), default=0.0)
    text = Text(f"{row.label:>12}  ")
    for token, value in zip(row.tokens, row.relevance):
        text.append(token.replace("\n", "⏎"), style=_style(value, scale))
        text.append(" " if len(token) > 1 else "")
    return text


def print_terminal(results: dict[str, Any], tokenizer: Any, console=None, sample: int = 0) -> None:
    """Print each result (``{"plain": r, "libra": r}``) as coloured token lines, one per target.

    Args:
        results: name -> :class:`~libra_fx.text.TextAttribution`.
        tokenizer: anything with ``convert_ids_to_tokens``.
        console: a ``rich`` console (default: a new one on stdout).
        sample: which batch row.

    Returns:
        Nothing; prints.

    Example:
        >>> print_terminal({"libra": result}, tok)
    """
    from rich.console import Console

    console = console or Console(highlight=False)
    for name, result in results.items():
        console.print(f"[bold]{name}[/bold] · {result.method}")
        for row in rows(result, tokenizer, sample):
            note = f"  score {row.score:+.3g}"
            if row.completeness_error is not None:
                note += f"  CE {row.completeness_error:.1e}"
            console.print(terminal_text(row) + note)


# --------------------------------------------------------------------------- HTML


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{padding:2px 5px;font-family:ui-monospace,monospace;font-size:13px;text-align:center;white-space:pre}
th.row{text-align:right;font-weight:normal;color:#555}
th.col{font-weight:normal;color:#555;border-bottom:1px solid #ccc}
.note{color:#666;font-size:12px}"""


def _cell_colour(value: float, scale: float) -> str:
    level = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    alpha = f"{level:.3f}"
    return f"rgba(220,40,40,{alpha})" if value >= 0 else f"rgba(40,80,220,{alpha})"


def _heat_table(table_rows: list[TextRow]) -> str:
    """Columns: the longest row's tokens (the prompt, then the continuation); one row per target."""
    columns = max(table_rows, key=lambda r: len(r.tokens)).tokens
    head = "".join(f'<th class="col">{html.escape(t)}</th>' for t in columns)
    body = []
    for row in table_rows:
        scale = max((abs(v) for v in row.relevance), default=0.0)
        cells = "".join(f'<td style="background:{_cell_colour(v, scale)}" title="{v:.4g}">{html.escape(t)}</td>'
                        for t, v in zip(row.tokens, row.relevance))
        cells += "<td></td>" * (len(columns) - len(row.tokens))
        note = f"score {row.score:+.4g}" + (f", CE {row.completeness_error:.1e}" if row.completeness_error is not None else "")
        body.append(f'<tr><th class="row">{html.escape(row.label)}</th>{cells}'
                    f'<td class="note">{html.escape(note)}</td></tr>')
    return f"<table><tr><th></th>{head}<th></th></tr>{''.join(body)}</table>"


def to_html(results: dict[str, Any], tokenizer: Any, title: str, sample: int = 0) -> str:
    """A self-contained HTML page: one heat table (explained tokens × input tokens) per result.

    Args:
        results: ``{"plain": TextAttribution, "libra": TextAttribution}`` (any names).
        tokenizer: anything with ``convert_ids_to_tokens``.
        title: the page heading.
        sample: which batch row.

    Returns:
        The page (inline CSS, no scripts, no external assets).

    Example:
        >>> Path("out.html").write_text(to_html({"libra": result}, tok, "tiny-llama"))
    """
    sections = []
    for name, result in results.items():
        sections.append(f"<h2>{html.escape(name)} · {html.escape(result.method)}</h2>")
        sections.append(_heat_table(rows(result, tokenizer, sample)))
    legend = ('<p class="note">red: positive relevance, blue: negative; each row scaled by its largest '
              "magnitude; hover a cell for its value. Rows: explained tokens (teacher-forced); "
              "columns: the tokens before them.</p>")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{legend}{''.join(sections)}"
            "</body></html>")


# --------------------------------------------------------------------------- JSON


def to_dict(results: dict[str, Any], tokenizer: Any, sample: int = 0) -> dict:
    """JSON-ready dict: per result, the method, Libra flag, blocks and each explained row.

    Args:
        results: name -> :class:`~libra_fx.text.TextAttribution`.
        tokenizer: anything with ``convert_ids_to_tokens``.
        sample: which batch row.

    Returns:
        name -> ``{"method", "libra", "blocks", "input_ids", "attention_mask", "rows"}``.

    Example:
        >>> json.dumps(to_dict({"libra": result}, tok))
    """
    out = {}
    for name, result in results.items():
        out[name] = {
            "method": result.method, "libra": result.libra, "blocks": list(result.blocks),
            "input_ids": [int(i) for i in result.input_ids[sample]],
            "attention_mask": [int(m) for m in result.attention_mask[sample]],
            "rows": [row.__dict__ for row in rows(result, tokenizer, sample)],
        }
    return out


def to_json(results: dict[str, Any], tokenizer: Any, sample: int = 0, **extra: Any) -> str:
    """:func:`to_dict` plus ``extra`` top-level fields, as indented JSON text.

    Args:
        results, tokenizer, sample: as for :func:`to_dict`.
        **extra: top-level fields (``model=``, ``text=``).

    Returns:
        ``{**extra, "results": to_dict(...)}`` as JSON.

    Example:
        >>> json.loads(to_json({"libra": result}, tok, model="hf:tiny-llama"))["model"]
        'hf:tiny-llama'
    """
    return json.dumps({**extra, "results": to_dict(results, tokenizer, sample)}, indent=2)
