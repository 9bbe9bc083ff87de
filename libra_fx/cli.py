"""``libra-fx``: inspect, audit and visualise LibraGrad rewrites from the command line.

Commands::

    libra-fx diff MODEL      what the passes change, as a per-pass summary and a graph diff
    libra-fx audit MODEL     rewrites, ops left unbalanced, completeness error before/after
    libra-fx explain MODEL [IMAGE_OR_DIR ...]   plain vs Libra heatmaps as PNGs
    libra-fx passes          the available passes and groups

MODEL is a timm name (``vit_tiny_patch16_224``), ``timm:NAME``, ``open_clip:ARCH``,
``torchvision:NAME``, ``hf:NAME`` (``hf:tiny-llama`` works offline; ``explain`` then takes
``--text "..."``) or ``path/to/file.py:factory``. Weights are random unless
``--pretrained`` or ``--checkpoint`` is given.

Errors the user can fix (unknown model, unreadable image, untraceable model, ...) print one
line on stderr and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from libra_fx.errors import LibraError

EXIT_OK, EXIT_STRICT, EXIT_USAGE = 0, 1, 2
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_IMAGE = Path(__file__).with_name("assets") / "default.png"
RANDOM_WEIGHTS_NOTE = (
    "note: {model} has RANDOM weights (no --pretrained / --checkpoint); "
    "maps show the architecture, not learned evidence"
)


# --------------------------------------------------------------------------- consoles


def _console(stderr: bool = False, file=None):
    """A rich console: colour on a terminal, plain text when piped or written to a file."""
    from rich.console import Console

    if file is not None:
        return Console(file=file, no_color=True, highlight=False, width=10_000, soft_wrap=True)
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 200  # piped: tables would otherwise wrap at 80 columns
    return console


def _note(message: str) -> None:
    _console(stderr=True).print(f"[yellow]{message}[/yellow]")


_DEBUG = False


@contextlib.contextmanager
def _quiet():
    """Hide library chatter (torch.export prints partial graphs on failure, transform warns about
    what the audit lists anyway) so errors arrive as one line; ``--debug`` shows everything."""
    if _DEBUG:
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _silence_loggers() -> None:
    """torch and open_clip log through handlers bound to the real stderr; raise their levels."""
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip: "No pretrained weights loaded" (we say so)
    try:
        import torch._logging

        torch._logging.set_logs(all=logging.ERROR)
    except Exception:  # older torch without the API: only costs some noise
        pass


# --------------------------------------------------------------------------- shared steps


def _parse_passes(value: str | None) -> list[str] | None:
    """``--passes attention,norm`` -> names, validated against the registry (pass or group)."""
    if not value:
        return None
    import passes as passes_pkg

    known = set(passes_pkg.REGISTRY) | set(passes_pkg.GROUPS)
    names = [p.strip() for p in value.split(",") if p.strip()]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
            raise LibraError(f"unknown pass {name!r}{hint}")
    return names


def _load(args, prompts=None):
    from libra_fx.models import load_model

    return load_model(
        args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
        input_size=args.input_size, prompts=prompts,
    )


def _size_text(size) -> str:
    return "x".join(str(s) for s in size)


def _finding_dict(finding) -> dict:
    return {
        "op": str(finding.op), "module": finding.module_path or "<root>",
        "reason": finding.reason, "source": finding.source,
    }


def _write_or_print(text: str, output: str | None, console_render: Callable | None = None) -> None:
    """Write ``text`` to ``--output`` if given, else print it (``console_render`` adds colour)."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
        _console(stderr=True).print(f"wrote {output}")
    elif console_render is not None:
        console_render(_console())
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


# --------------------------------------------------------------------------- diff


def run_diff(args) -> int:
    """``libra-fx diff``: per-pass summary plus a unified diff of the graph before/after."""
    import libra_fx
    from libra_fx import diff as gdiff

    selected = _parse_passes(args.passes)  # before the model loads: typos fail fast
    loaded = _load(args)
    module, example, kwargs = loaded.capture_args()
    with _quiet():
        gm = libra_fx.transform(module, example, passes=selected, **kwargs)
    report = gm.libra_report
    before, after = gdiff.render_graph(report.traced), gdiff.render_graph(gm)
    lines = gdiff.unified(before, after, context=args.context, name=loaded.name)
    summary = gdiff.summarize_rewrites(report.rewrites)
    data = {
        "model": loaded.name,
        "input_size": list(loaded.input_size),
        "nodes_before": len(before),
        "nodes_after": len(after),
        "rewrites": summary,
        "unbalanced": [_finding_dict(f) for f in report.unbalanced],
        "timings": dict(report.timings),
        "diff": lines,
    }
    DIFF_FORMATS[args.format](data, before, after, args)
    return EXIT_OK


def _diff_json(data, before, after, args):
    _write_or_print(json.dumps(data, indent=2, default=str), args.output)


def _diff_html(data, before, after, args):
    from libra_fx.diff import to_html

    page = to_html(before, after, data["model"], data["rewrites"], context=args.context)
    _write_or_print(page, args.output)


def _diff_text(data, before, after, args):
    header = (
        f"libra-fx diff {data['model']}  (input {_size_text(data['input_size'])}, "
        f"{data['nodes_before']} -> {data['nodes_after']} nodes)"
    )
    summary = [f"{s['pass']:<22} {s['count']:>5}  {', '.join(s['modules'])}" for s in data["rewrites"]]
    unbalanced = [f"UNBALANCED {f['op']} in {f['module']}: {f['reason']} ({f['source']})" for f in data["unbalanced"]]
    plain = [header, "", "rewrites:", *(summary or ["(none)"]), *unbalanced, "", *data["diff"]]

    def render(console):
        from rich.table import Table
        from rich.text import Text

        console.print(Text(header, style="bold"))
        table = Table("pass", "rewrites", "modules", title=None, show_edge=False)
        for s in data["rewrites"]:
            table.add_row(s["pass"], str(s["count"]), ", ".join(s["modules"]))
        console.print(table if data["rewrites"] else Text("no rewrites", style="dim"))
        for line in unbalanced:
            console.print(Text(line, style="bold red"))
        console.print()
        for line in data["diff"]:
            console.print(Text(line, style=_diff_style(line)))

    # Piped output stays grep-friendly: the same plain lines --output writes, no table borders.
    fancy = not args.output and _console().is_terminal
    _write_or_print("\n".join(plain), args.output, render if fancy else None)


def _diff_style(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "bold"
    return {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "")


#: --format -> writer(data, before_lines, after_lines, args)
DIFF_FORMATS = {"text": _diff_text, "json": _diff_json, "html": _diff_html}


# --------------------------------------------------------------------------- audit


def run_audit(args) -> int:
    """``libra-fx audit``: rewrites, unbalanced ops and completeness error; ``--strict`` gates CI."""
    import libra_fx
    from libra_fx.diff import summarize_rewrites

    selected = _parse_passes(args.passes)
    loaded = _load(args)
    with _quiet():
        if loaded.kind == "hf":  # completeness on the embeddings only, the model's own next token
            from libra_fx.text import TextModel, audit_text

            result = audit_text(TextModel(loaded.model, passes=selected), length=loaded.input_size[0])
        else:
            result = libra_fx.audit(loaded.model, (loaded.example_input(),), passes=selected)
    data = {
        "model": loaded.name,
        "input_size": list(loaded.input_size),
        "rewrites": summarize_rewrites(result.rewrites),
        "unbalanced": [_finding_dict(f) for f in result.unbalanced],
        "completeness_before": result.completeness_before,
        "completeness_after": result.completeness_after,
    }
    if args.format == "json":
        _write_or_print(json.dumps(data, indent=2, default=str), args.output)
    else:
        _audit_text(data, args.output)
    failed = args.strict and bool(data["unbalanced"])
    return EXIT_STRICT if failed else EXIT_OK


def _audit_text(data: dict, output: str | None) -> None:
    from rich.table import Table

    out = open(output, "w", encoding="utf-8") if output else None
    try:
        console = _console(file=out)
        console.print(f"[bold]libra-fx audit {data['model']}[/bold]  (input {_size_text(data['input_size'])})")
        rewrites = Table("pass", "rewrites", "modules", title="rewrites", title_justify="left")
        for s in data["rewrites"]:
            rewrites.add_row(s["pass"], str(s["count"]), ", ".join(s["modules"]))
        console.print(rewrites if data["rewrites"] else "rewrites: none")
        if data["unbalanced"]:
            table = Table("op", "count", "modules", "reason", "source", title="[red]still unbalanced[/red]",
                          title_justify="left")
            for g in group_findings(data["unbalanced"]):
                table.add_row(g["op"], str(g["count"]), ", ".join(g["modules"]), g["reason"], g["source"])
            console.print(table)
        else:
            console.print("[green]unbalanced: none[/green] (every op is balanced or rewritten)")
        console.print(
            "completeness error (FullGrad, relative, random input): "
            f"plain {_fmt_err(data['completeness_before'])} -> Libra {_fmt_err(data['completeness_after'])}"
        )
    finally:
        if out:
            out.close()
            _console(stderr=True).print(f"wrote {output}")


def group_findings(findings: list[dict]) -> list[dict]:
    """Fold findings that share op and reason (one row per ResNet ``relu_``, not sixteen).

    Returns:
        ``[{"op", "count", "modules" (compressed), "reason", "source" (first, shortened)}]``.
    """
    from libra_fx.diff import compress_paths

    groups: dict[tuple, list[dict]] = {}
    for f in findings:
        groups.setdefault((f["op"], f["reason"]), []).append(f)
    return [
        {"op": op, "count": len(fs), "modules": compress_paths(f["module"] for f in fs), "reason": reason,
         "source": short_source(fs[0]["source"])}
        for (op, reason), fs in groups.items()
    ]


def short_source(source: str | None) -> str:
    """``/…/site-packages/timm/layers/mlp.py:42`` -> ``timm/layers/mlp.py:42``; cwd-relative paths."""
    if not source:
        return "?"
    if "site-packages/" in source:
        return source.rsplit("site-packages/", 1)[1]
    cwd = str(Path.cwd()) + "/"
    return source[len(cwd):] if source.startswith(cwd) else source


def _fmt_err(value) -> str:
    return "n/a" if value is None else f"{float(value):.2e}"


# --------------------------------------------------------------------------- explain


def collect_images(paths: list[str]) -> list[Path]:
    """Expand files and folders into image paths; the packaged sample when none is given.

    Args:
        paths: files or folders from the command line.

    Returns:
        Image paths, folder contents sorted by name.

    Raises:
        LibraError: a missing path, a folder without images, or a file PIL cannot identify.

    Example:
        >>> collect_images([])[0].name
        'default.png'
    """
    if not paths:
        return [DEFAULT_IMAGE]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise LibraError(f"no images in folder {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise LibraError(f"image not found: {path}")
    for path in found:  # identify every file now, so a bad one fails before the model loads
        open_image(path, load=False)
    return found


def open_image(path: Path, load: bool = True):
    """Open an image as RGB, naming the file in the error if PIL cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        if load:
            image.load()
            image = image.convert("RGB")
        return image
    except UnidentifiedImageError as exc:
        raise LibraError(f"cannot read image {path}: not an image format PIL recognises") from exc
    except (OSError, ValueError) as exc:  # truncated or corrupt data, unreadable file
        raise LibraError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


@dataclass
class _Target:
    index: int | None  # None: score with the model's own target_fn
    label: str


def _targets(args, loaded, logits) -> list[_Target]:
    """Rows of the figure: --target classes, CLIP prompts, or the model's top-1 prediction."""
    if loaded.kind == "open_clip":
        indices = args.target or range(len(loaded.labels))
        return [_Target(i, f"“{loaded.label(i)}”") for i in indices]
    if args.target:
        return [_Target(i, f"{i}: {loaded.label(i)}") for i in args.target]
    if loaded.target_fn is not None:
        return [_Target(None, "target_fn")]
    top = int(logits[0].argmax())
    return [_Target(top, f"top-1 {top}: {loaded.label(top)}")]


def _maps(loaded, balanced, batch, targets, method, libra):
    """Attribution of all targets of one image in one batched call.

    Args:
        balanced: ``libra_fx.transform`` of the model, shared by the plain (its ``traced``
            graph) and the Libra attribution, so the model is captured once per run.

    Returns:
        ``(maps (T, H, W), notes)``: notes are per-row panel captions (completeness error).
    """
    import torch

    import libra_fx

    if targets[0].index is None:
        target = loaded.target_fn
    else:
        target = torch.tensor([t.index for t in targets])
    # The transformed GraphModule drops plain attributes of the model; pass the token layout on.
    prefix = getattr(loaded.model, "num_prefix_tokens", None)
    options = {"num_prefix_tokens": prefix} if isinstance(prefix, int) else {}
    with _quiet():
        result = libra_fx.attribute(balanced, batch, target, method=method, libra=libra, **options)
    if result.image_map is None:
        raise LibraError(f"method {method!r} gives no image map for {loaded.name}")
    ce = getattr(result, "completeness_error", None)
    notes = [f"CE {float(e):.1e}" for e in ce] if ce is not None else [""] * len(targets)
    return result.image_map.detach(), notes


def _output_path(out: Path, image: Path, model: str, method: str, used: set) -> Path:
    """``OUT/<image>__<model>__<method>.png``, suffixed when two inputs share a stem.

    The model is part of the name so runs of several models into one folder do not collide.
    """
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{image.stem}__{Path(model).stem if model.endswith('.py') else model}")
    stem = f"{slug}__{method.replace('+', 'plus')}"
    path, n = out / f"{stem}.png", 1
    while path in used:
        n += 1
        path = out / f"{stem}_{n}.png"
    used.add(path)
    return path


def run_explain(args) -> int:
    """``libra-fx explain``: one PNG per image, plain vs Libra maps per target, with a colour bar."""
    import torch
    from rich.progress import Progress

    import libra_fx
    from libra_fx import viz

    if args.model.startswith("hf:"):
        return run_explain_text(args)
    if args.text:
        raise LibraError("--text needs an hf:MODEL (a Hugging Face language model or classifier)")
    images = collect_images(args.images)  # validate inputs before the (slow) model load
    if args.prompt and not args.model.startswith("open_clip:"):
        raise LibraError("--prompt needs an open_clip:ARCH model (it scores images against text)")
    with _quiet():
        loaded = _load(args, prompts=args.prompt)
    if not loaded.pretrained:
        _note(RANDOM_WEIGHTS_NOTE.format(model=loaded.name))
    out, used, written, balanced = Path(args.out), set(), [], {}
    weights = "checkpoint" if args.checkpoint else "pretrained" if args.pretrained else "random weights"
    # Bound to the real stderr object, so _quiet() around the attribution calls does not eat it.
    progress_console = _console(file=sys.stderr) if not sys.stderr.isatty() else _console(stderr=True)
    progress_console.file = sys.stderr
    with Progress(console=progress_console, transient=False) as progress:
        task = progress.add_task(f"explain {loaded.name}", total=len(images))
        for path in images:
            x = loaded.transform(open_image(path)).unsqueeze(0)
            with torch.no_grad():
                logits = loaded.model(x)
            targets = _targets(args, loaded, logits)
            batch = x.expand(len(targets), *x.shape[1:]).clone()
            if len(targets) not in balanced:  # an export-captured graph may fix the batch size
                with _quiet():
                    balanced[len(targets)] = libra_fx.transform(loaded.model, (batch,))
            gm = balanced[len(targets)]
            plain, plain_notes = _maps(loaded, gm, batch, targets, args.method, False)
            libra, libra_notes = _maps(loaded, gm, batch, targets, args.method, True)
            rows = [viz.Row(t.label, plain[i], libra[i], plain_notes[i], libra_notes[i])
                    for i, t in enumerate(targets)]
            title = f"{loaded.name} · {path.name} · {weights}"
            image = viz.to_display_image(x, loaded.mean, loaded.std)
            written.append(viz.save_overlay(image, rows, _output_path(out, path, loaded.name, args.method, used),
                                            method=args.method, title=title))
            progress.advance(task)
    for path in written:
        print(path)
    return EXIT_OK


def _text_target(args, loaded, lm, ids):
    """--continuation / --generate N (language models) or --target [--foil]; the model's own
    prediction when none is given."""
    from libra_fx.text import Contrast, greedy_continuation

    if args.target and args.foil is not None:
        return Contrast(args.target[0], args.foil)
    if args.target:
        return args.target if len(args.target) > 1 and lm.is_lm else args.target[0]
    if args.continuation:
        return loaded.extras["tokenizer"].encode(args.continuation, add_special_tokens=False)
    if lm.is_lm and args.generate > 0:
        return greedy_continuation(lm, ids, args.generate)
    return None


def run_explain_text(args) -> int:
    """``libra-fx explain hf:MODEL --text ...``: plain vs Libra token relevance in the terminal,
    and a self-contained HTML page plus JSON in ``--out``."""
    import torch

    import libra_fx
    from libra_fx import textview

    from libra_fx.text import TextModel

    if not args.text:
        raise LibraError("explain hf:MODEL needs --text \"...\" (the prompt to explain)")
    selected = _parse_passes(args.passes)
    with _quiet():
        loaded = _load(args)
    if not loaded.pretrained:
        _note(RANDOM_WEIGHTS_NOTE.format(model=loaded.name))
    tokenizer, lm = loaded.extras["tokenizer"], TextModel(loaded.model, passes=selected)
    ids = torch.tensor([tokenizer.encode(args.text)])
    target = _text_target(args, loaded, lm, ids)
    with _quiet():
        results = {name: libra_fx.attribute(lm, input_ids=ids, target=target, method=args.method, libra=flag)
                   for name, flag in (("plain", False), ("libra", True))}
    textview.print_terminal(results, tokenizer, _console())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{loaded.name}__{args.method.replace('+', 'plus')}")
    title = f"{loaded.name} · {args.method} · {'pretrained' if loaded.pretrained else 'random weights'}"
    page, data = out / f"{stem}.html", out / f"{stem}.json"
    page.write_text(textview.to_html(results, tokenizer, title), encoding="utf-8")
    data.write_text(textview.to_json(results, tokenizer, model=loaded.name, text=args.text), encoding="utf-8")
    for path in (page, data):
        print(path)
    return EXIT_OK


# --------------------------------------------------------------------------- passes


def run_passes(args) -> int:
    """``libra-fx passes``: list passes by group with the first line of their docstring."""
    import passes as passes_pkg
    from rich.table import Table

    table = Table("group", "pass", "what it does")
    for group, names in passes_pkg.GROUPS.items():
        for name in names:
            doc = (passes_pkg.REGISTRY[name].__doc__ or "").strip().splitlines()
            table.add_row(group, name, doc[0] if doc else "")
    _console().print(table)
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm name, timm:NAME, open_clip:ARCH, torchvision:NAME, hf:NAME or file.py:factory")
    p.add_argument("--pretrained", action="store_true", help="load the library's pretrained weights (downloads)")
    p.add_argument("--checkpoint", metavar="PATH", help="load a state dict from PATH")
    p.add_argument("--input-size", metavar="N|HxW|C,H,W", help="input size (default: the model's own)")
    p.add_argument("--passes", metavar="LIST", help="comma list of passes or groups (default: all)")


def _diff_args(p):
    _add_model_args(p)
    p.add_argument("--format", choices=sorted(DIFF_FORMATS), default="text")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--context", type=int, default=2, metavar="N", help="diff context lines (default 2)")


def _audit_args(p):
    _add_model_args(p)
    p.add_argument("--strict", action="store_true", help="exit 1 when any op is still unbalanced")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")


def _explain_args(p):
    _add_model_args(p)
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="images or folders (default: a sample)")
    p.add_argument("--method", default="fullgrad+", help="attribution method (default fullgrad+)")
    p.add_argument("--target", type=int, action="append", metavar="CLASS",
                   help="class index; repeat for rows (hf: a next-token id; repeated: a continuation of ids)")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="CLIP prompt; repeat for rows")
    p.add_argument("--out", default="libra-fx-out", metavar="DIR", help="output folder (default libra-fx-out)")
    p.add_argument("--text", metavar="TEXT", help="hf: models: the prompt to explain")
    p.add_argument("--generate", type=int, default=3, metavar="N",
                   help="hf: language models: explain the N tokens the model generates (default 3)")
    p.add_argument("--continuation", metavar="TEXT", help="hf: language models: explain this continuation")
    p.add_argument("--foil", type=int, metavar="ID", help="hf: with --target ID, explain logit(ID) - logit(FOIL)")


#: subcommand -> (help, argument adder, runner)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "diff": ("show what the Libra passes change in a model's graph", _diff_args, run_diff),
    "audit": ("list rewrites, unbalanced ops and completeness error", _audit_args, run_audit),
    "explain": ("write plain vs Libra heatmap overlays as PNGs", _explain_args, run_explain),
    "passes": ("list the available passes", lambda p: None, run_passes),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``libra-fx`` argument parser (one subparser per entry of ``COMMANDS``)."""
    parser = argparse.ArgumentParser(
        prog="libra-fx", description="LibraGrad as a compiler pass: diff, audit and explain models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, runner) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=runner)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``explain`` take images after options (``explain M --input-size 64 a.png``).

    argparse binds ``nargs="*"`` positionals once, before the options that follow the model, so
    images given later come back as extras; they are images when they do not look like options.
    """
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-")]
    if stray or (extra and args.command != "explain"):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.images = list(args.images) + extra
    return args


#: Exceptions that are the user's input, not our bug: shown as one line, exit 2.
USER_ERRORS = (LibraError, FileNotFoundError, PermissionError, IsADirectoryError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``libra-fx`` console script.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        Exit status: 0 ok, 1 ``audit --strict`` found unbalanced ops, 2 user error.

    Example:
        >>> main(["audit", "resnet18", "--input-size", "64", "--strict"])
        0
    """
    global _DEBUG
    args = _parse(build_parser(), argv)
    _DEBUG = args.debug
    if not args.debug:
        _silence_loggers()
    try:
        return args.run(args)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"libra-fx: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("libra-fx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
