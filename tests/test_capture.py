"""Capture's pieces (issue 13: one concept per module): structured outputs survive a GraphModule copy,
the one copy keeps what libra_fx attaches, node provenance reads both captures alike and never
points at libra_fx's own tracer. Tiny models only; runs in seconds."""
from __future__ import annotations

import collections
import copy
import dataclasses
import pickle
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn

import libra_fx
from libra_fx.graph_copy import copy_graph_module, preserve_attribute
from libra_fx.module_paths import inherit_provenance, module_path, module_stack_paths, owning_module, source_line
from libra_fx.outputs import StructuredOutputCodeGen, flatten_value, rebuild_output, structured_output
from libra_fx.tracer import watch_autograd_functions
from libra_fx.tracing import trace


class ModelOutput(collections.OrderedDict):
    """Hugging Face style: an OrderedDict whose keys are also attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc


@dataclasses.dataclass
class Pair:
    first: torch.Tensor
    second: Optional[torch.Tensor] = None


class Structured(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.GELU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        hidden = self.body(x)
        return ModelOutput(logits=self.head(hidden), extra=(Pair(hidden, None), [hidden.sum(1)]))


def same_structure(a, b) -> bool:
    spec_a, leaves_a = flatten_value(a, leaf=lambda v: isinstance(v, torch.Tensor))
    spec_b, leaves_b = flatten_value(b, leaf=lambda v: isinstance(v, torch.Tensor))
    return spec_a == spec_b and all(torch.equal(x, y) for x, y in zip(leaves_a, leaves_b))


def test_structured_output_round_trips_through_copy_graph_module():
    torch.manual_seed(0)
    model, x = Structured().eval(), torch.randn(2, 4)
    gm = trace(model)
    assert isinstance(gm.graph._codegen, StructuredOutputCodeGen)
    output = [n for n in gm.graph.nodes if n.op == "output"][0]
    assert all(isinstance(a, fx.Node) for a in output.args[0])  # only tensors in the graph's output

    copied = copy_graph_module(gm)
    result = copied(x)
    assert type(result) is ModelOutput and type(result["extra"][0]) is Pair
    assert same_structure(result, model(x))
    assert same_structure(copy.deepcopy(copied)(x), model(x))
    assert same_structure(pickle.loads(pickle.dumps(copied))(x), model(x))

    # a copy with default code generation returns the flat leaves; structured_output rebuilds them
    plain = copy_graph_module(gm)
    plain.graph.set_codegen(fx.graph.CodeGen())
    plain.recompile()
    flat = plain(x)
    assert isinstance(flat, tuple) and all(isinstance(t, torch.Tensor) for t in flat)
    assert same_structure(structured_output(gm, flat), model(x))
    assert structured_output(plain, flat) is flat
    spec, leaves = flatten_value(model(x))
    assert same_structure(rebuild_output(spec, leaves), model(x))


def test_copy_graph_module_keeps_codegen_meta_and_preserved_attributes():
    gm = trace(Structured().eval())
    preserve_attribute(gm, "note", {"kept": True})
    gm.loose = "set without preserve_attribute"
    copied = copy_graph_module(gm, attributes=("loose", "absent"))

    assert copied.graph is not gm.graph and type(copied.graph._codegen) is type(gm.graph._codegen)
    assert copied.meta["libra_capture"] == gm.meta["libra_capture"]
    assert copied.note is gm.note and copied._libra_output_spec is gm._libra_output_spec
    assert copied.loose == gm.loose and not hasattr(copied, "absent")
    assert copy.deepcopy(copied).loose == gm.loose  # the named attribute is preserved on the copy
    # the copy's list of preserved attributes is its own: preserving on one leaves the other alone
    preserve_attribute(copied, "only_copy", 1)
    assert "only_copy" not in gm.meta["_user_preserved_attributes"]
    # editing the copy's graph leaves gm's alone
    before = len(gm.graph.nodes)
    relu = next(n for n in copied.graph.nodes if n.op == "call_function")
    with copied.graph.inserting_after(relu):
        copied.graph.call_function(torch.relu, (relu,))
    assert len(gm.graph.nodes) == before


def test_compile_copy_of_a_structured_output_module_runs():
    """``libra_fx.compile`` lowers a copy: that copy must rebuild ModelOutputs like the original."""
    torch.manual_seed(0)
    model, x = Structured().eval(), torch.randn(2, 4)
    gm = libra_fx.transform(model, x, verify=False)
    copied = copy_graph_module(gm, attributes=("libra_report",))
    assert copied.libra_report is gm.libra_report
    assert same_structure(copied(x), gm(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(self.norm(x)).relu()


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.shared = nn.Linear(4, 4)

    def forward(self, x):
        return self.shared(self.shared(self.blocks(x)))


def _by_name(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


def test_module_paths_read_both_captures_alike():
    model, x = Blocks().eval(), torch.randn(2, 4)
    traced = trace(model)
    exported = trace(model, x, capture="export")
    for gm in (traced, exported):
        paths = {module_path(n) for n in gm.graph.nodes if n.op == "call_function"}
        assert {"blocks.0.lin", "blocks.1.norm", "shared"} <= paths, paths
        linear = next(n for n in gm.graph.nodes if module_path(n) == "blocks.1.lin")
        assert [p for p in module_stack_paths(linear) if p] == ["blocks", "blocks.1", "blocks.1.lin"]
    # a module called twice is still named by its path (FX keys the second call ``shared@1``)
    assert sum(module_path(n) == "shared" for n in traced.graph.nodes if n.op == "call_function") == 2
    placeholder = next(n for n in traced.graph.nodes if n.op == "placeholder")
    assert module_path(placeholder) == "" and owning_module(placeholder) == ""


def test_owning_module_puts_call_modules_under_their_parent():
    gm = trace(nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 1, batch_first=True)).eval())
    mha = next(n for n in gm.graph.nodes if n.op == "call_module")
    assert module_path(mha) == mha.target == "1" and owning_module(mha) == ""
    read = gm.graph.get_attr("0.weight")  # as a pass inserts it: no module stack
    assert module_path(read) == "" and owning_module(read) == "0"


def test_source_lines_point_at_the_model_not_the_tracer():
    """The batch-norm forward the tracer substitutes lives in libra_fx: its frame is not model code."""
    gm = trace(Blocks().eval())
    norm = next(n for n in gm.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target))
    line = source_line(norm)
    assert line is not None and "test_capture.py" in line and "/libra_fx/" not in line


def test_inherit_provenance_copies_module_stack_and_tags_pass():
    gm = trace(Blocks().eval())
    anchor = next(n for n in gm.graph.nodes if module_path(n) == "blocks.0.lin")
    with gm.graph.inserting_after(anchor):
        new = gm.graph.call_function(torch.relu, (anchor,))
    assert inherit_provenance(new, anchor, "demo") is new
    assert module_path(new) == "blocks.0.lin" and source_line(new) == source_line(anchor)
    assert new.meta["libra_pass"] == "demo"


def test_watch_autograd_functions_restores_apply():
    original = torch.autograd.Function.__dict__["apply"]
    with watch_autograd_functions([]) as record:
        assert torch.autograd.Function.__dict__["apply"] is not original
        assert record == []
    assert torch.autograd.Function.__dict__["apply"] is original
