"""Merge several exported translator networks into one ONNX graph that averages them.

Members trained with different seeds see different renderings of the corpus and make different
mistakes; the average of their class distributions is more accurate and better calibrated than
either. Merging happens at the ONNX level so the run time stays one session with the same inputs
and outputs (``logits``, ``embedding``): no change in `gateway.translator.model`.

- ``logits`` = log of the mean of the members' softmax distributions (the run time's softmax of
  it gives back that mean exactly).
- ``embedding`` = the members' unit-length embeddings concatenated and scaled by 1/sqrt(M), so it
  is unit length again and the cosine of two points is the mean of the members' cosines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

OUTPUTS = ("logits", "embedding")


def merge(paths: Sequence[Path], out: Path) -> None:
    """Write one ONNX model that runs every model of ``paths`` on the same inputs and averages."""
    import onnx
    from onnx import TensorProto, helper

    models = [onnx.load(str(p)) for p in paths]
    if len(models) == 1:
        onnx.save(models[0], str(out))
        return
    inputs = [i.name for i in models[0].graph.input]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    logits: list[str] = []
    embs: list[str] = []
    for k, m in enumerate(models):
        if [i.name for i in m.graph.input] != inputs:
            raise ValueError(f"{paths[k]}: inputs differ from {paths[0]}")
        prefix = f"m{k}/"
        # Inputs keep their names so every member reads the same feeds.
        m = onnx.compose.add_prefix(m, prefix, rename_inputs=False)
        nodes.extend(m.graph.node)
        inits.extend(m.graph.initializer)
        prob = f"{prefix}probs"
        nodes.append(helper.make_node("Softmax", [f"{prefix}logits"], [prob], axis=-1))
        logits.append(prob)
        embs.append(f"{prefix}embedding")
    m_inv = 1.0 / len(models)
    inits += [
        helper.make_tensor("ens/inv_m", TensorProto.FLOAT, [], [m_inv]),
        helper.make_tensor("ens/inv_sqrt_m", TensorProto.FLOAT, [], [math.sqrt(m_inv)]),
        helper.make_tensor("ens/tiny", TensorProto.FLOAT, [], [1e-12]),
    ]
    nodes += [
        helper.make_node("Sum", logits, ["ens/sum"]),
        helper.make_node("Mul", ["ens/sum", "ens/inv_m"], ["ens/mean"]),
        helper.make_node("Max", ["ens/mean", "ens/tiny"], ["ens/clipped"]),
        helper.make_node("Log", ["ens/clipped"], ["logits"]),
        helper.make_node("Concat", embs, ["ens/cat"], axis=1),
        helper.make_node("Mul", ["ens/cat", "ens/inv_sqrt_m"], ["embedding"]),
    ]
    first = models[0].graph
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None]),
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", None]),
    ]
    graph = helper.make_graph(nodes, "translator_ensemble", list(first.input), outputs, inits)
    merged = helper.make_model(graph, opset_imports=list(models[0].opset_import))
    merged.ir_version = models[0].ir_version
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out))
