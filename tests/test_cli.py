"""The ``libra-fx`` command line, run as a subprocess the way a new user would run it.

Small models and small inputs keep the file under a minute on two cores; weights are random,
nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from libra_fx.viz import figure_size_px

VIT = ["vit_tiny_patch16_224", "--input-size", "32"]

EXP_MODEL = """
import torch
from torch import nn

class ExpHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return torch.exp(self.fc(x.mean((2, 3))))   # exp feeds the output: cannot be balanced

def create_model():
    return ExpHead()
"""

BRANCHY_MODEL = """
from torch import nn

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        if x.sum() > 0:                              # data-dependent control flow
            return self.fc(x.mean((2, 3)))
        return -self.fc(x.mean((2, 3)))

def make():
    return Branchy()
"""


def libra_fx(*args, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m libra_fx.cli ARGS``; no run may ever show a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "libra_fx.cli", *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _diff_json(*args) -> dict:
    proc = libra_fx("diff", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _passes(data: dict) -> dict[str, dict]:
    return {entry["pass"]: entry for entry in data["rewrites"]}


# --------------------------------------------------------------------------- diff


def test_diff_vit_text():
    proc = libra_fx("diff", *VIT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b[" not in out  # piped: no colour codes
    assert "blocks.{0..11}.attn" in out  # compressed module paths in the summary
    assert "+++ vit_tiny_patch16_224 (libra)" in out
    added = [line for line in out.splitlines() if line.startswith("+blocks.")]
    assert any("const(" in line and "attention" in line for line in added), added[:5]


def test_diff_vit_json():
    data = _diff_json(*VIT)
    passes = _passes(data)
    assert data["input_size"] == [3, 32, 32]
    assert passes["sdpa_attention"]["count"] == 12
    assert passes["sdpa_attention"]["modules"] == ["blocks.{0..11}.attn"]
    assert any(name in passes for name in ("normalization", "gated_activation"))
    assert data["unbalanced"] == []
    assert data["nodes_after"] > data["nodes_before"]
    assert any(line.startswith("+") and "# " in line for line in data["diff"])


def test_diff_mixer_json():
    data = _diff_json("mixer_s16_224", "--input-size", "32")
    modules = {m for entry in data["rewrites"] for m in entry["modules"]}
    assert any(m.startswith("blocks.{0..7}") for m in modules), modules
    assert data["unbalanced"] == []


def test_diff_open_clip_json():
    data = _diff_json("open_clip:ViT-S-32", "--input-size", "32")
    passes = _passes(data)
    assert data["model"] == "open_clip:ViT-S-32"
    assert passes["multihead_attention"]["modules"] == ["visual.transformer.resblocks.{0..11}.attn"]
    assert "l2_normalize" in passes  # CLIP's final embedding normalisation
    assert data["unbalanced"] == []


def test_diff_html_with_pass_selection(tmp_path, in_process):
    page = tmp_path / "diff.html"
    code, _, err = in_process("diff", *VIT, "--passes", "attention", "--format", "html", "--output", page)
    assert code == 0, err
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script src" not in html  # self-contained
    summary = html.split('<table class="diff"')[0]
    assert "sdpa_attention" in summary and "normalization" not in summary  # only the selected group


# --------------------------------------------------------------------------- audit


def test_audit_strict_balanced_model_exits_0():
    proc = libra_fx("audit", *VIT, "--strict", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["unbalanced"] == []
    assert data["completeness_after"] < 1e-4 < data["completeness_before"]


def test_audit_strict_unbalanced_model_exits_1(tmp_path):
    model = tmp_path / "exp_model.py"
    model.write_text(EXP_MODEL)
    proc = libra_fx("audit", model, "--input-size", "16", "--strict")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "still unbalanced" in proc.stdout
    assert "exp" in proc.stdout and "exp_model.py:11" in proc.stdout  # op and its source line


# --------------------------------------------------------------------------- explain


def test_explain_default_image(tmp_path):
    out = tmp_path / "out"
    proc = libra_fx("explain", *VIT, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stderr
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["default__vit_tiny_patch16_224__fullgradplus.png"]
    assert proc.stdout.split() == [str(p) for p in pngs]
    with Image.open(pngs[0]) as im:
        assert im.format == "PNG" and im.size == figure_size_px(1)


def test_explain_folder_with_targets(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    base = Image.open(Path(__file__).parents[1] / "libra_fx" / "assets" / "default.png")
    base.save(folder / "a.png")
    base.rotate(90).convert("RGB").save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image, skipped")
    proc = libra_fx("explain", *VIT, folder, "--target", 1, "--target", 7, "--out", out)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("*.png"))
    assert [p.name.split("__")[0] for p in pngs] == ["a", "b"]
    for png in pngs:
        with Image.open(png) as im:
            assert im.size == figure_size_px(2)  # one row per target


# --------------------------------------------------------------------------- errors


# Error paths run in-process through ``main`` (same code path as the console script, minus a
# four-second interpreter start each); the subprocess tests above already cover the entry point.


@pytest.fixture
def in_process(capsys):
    """Call ``libra_fx.cli.main(argv)``; returns ``(exit code, stdout, stderr)``."""
    import logging

    import torch._logging

    from libra_fx import cli

    root_level = logging.getLogger().level

    def run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return code, out, err

    yield run
    logging.getLogger().setLevel(root_level)  # main() quietens library loggers
    torch._logging.set_logs()


@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_text("this is not a PNG")
    (tmp_path / "branchy.py").write_text(textwrap.dedent(BRANCHY_MODEL))
    return tmp_path


@pytest.mark.parametrize(
    "args, message",
    [
        (["audit", "vit_tiny_patch16"], "unknown timm model 'vit_tiny_patch16'; did you mean"),
        (["explain", *VIT, "{tmp}/broken.png"], "cannot read image {tmp}/broken.png"),
        (["explain", *VIT, "{tmp}/empty"], "no images in folder {tmp}/empty"),
        (["diff", "{tmp}/branchy.py:make", "--input-size", "16"], "if x.sum() > 0:"),
        (["audit", *VIT, "--passes", "atention"], "unknown pass 'atention'; did you mean attention"),
    ],
    ids=["unknown-model", "unreadable-image", "empty-folder", "untraceable", "unknown-pass"],
)
def test_user_errors_are_one_line(bad_inputs, in_process, args, message):
    tmp = str(bad_inputs)
    code, out, err = in_process(*[a.replace("{tmp}", tmp) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("libra-fx: error: "), err
    assert message.replace("{tmp}", tmp) in lines[0]
    if "branchy" in args[1]:
        assert "branchy.py:10" in lines[0]  # the source line of the untraceable op


def test_error_from_console_script_has_no_traceback(tmp_path):
    """One error through a real interpreter: exit status 2 reaches the shell."""
    proc = libra_fx("explain", "resnet18", tmp_path / "missing.png")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"libra-fx: error: image not found: {tmp_path / 'missing.png'}"
