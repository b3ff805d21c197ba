"""One ONNX graph whose depth is chosen per request (`--format onnx-elastic`).

The dense model's decoder with past (blockprune.export.onnx) is rewritten, not re-traced: the
dynamo exporter records each node's module path, so every decoder block's nodes are known. Each
block's nodes move into the `then` branch of an `If` on `keep[l]` (an extra input,
bool[num_blocks]); the `else` branch passes the residual stream through and returns the block's
past key/value unchanged. A request keeps one mask for its whole generation: a skipped block's
cache slot stays as it came in (empty from the prefill on), and no compute is spent on it.

Values a block computes that later blocks reuse (the exporter shares rotary and shape work across
blocks) are hoisted out of its `If` so that skipping the block cannot leave them undefined; the
rewrite refuses to hoist anything that multiplies matrices (that would run a skipped block's work).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

from .onnx import ExportError

ELASTIC_FILE = "model_elastic.onnx"
HEAVY_OPS = {"MatMul", "Gemm", "MatMulNBits", "Attention", "GroupQueryAttention", "MultiHeadAttention"}


def make_elastic(decoder_path: Path, out_path: Path, num_blocks: int, block_path: str = "model.layers") -> dict:
    """Rewrite the dense decoder-with-past graph at `decoder_path` into the elastic one at `out_path`."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(decoder_path))  # external data loaded: written again beside the new graph
    g = model.graph
    pattern = re.compile(re.escape(block_path.split(".")[-1]) + r"\.(\d+): ")
    layer_of: list[int | None] = []
    for n in g.node:
        ns = {p.key: p.value for p in n.metadata_props}.get("namespace", "")
        hit = pattern.search(ns)
        layer_of.append(int(hit.group(1)) if hit else None)
    if sorted({l for l in layer_of if l is not None}) != list(range(num_blocks)):
        raise ExportError("onnx-elastic: the exported graph does not name its nodes by block "
                          f"(found blocks {sorted({l for l in layer_of if l is not None})[:5]}...)")
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    consumers = collections.defaultdict(set)
    for i, n in enumerate(g.node):
        for x in n.input:
            consumers[x].add(i)
        for attr in n.attribute:  # values a subgraph reads from this scope
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                for sn in sub.node:
                    for x in sn.input:
                        consumers[x].add(i)
    graph_outputs = {o.name for o in g.output}
    hoisted: set[int] = set()
    blocks = []
    for l in range(num_blocks):
        nodes = [i for i, x in enumerate(layer_of) if x == l]
        inside = set(nodes)
        escaping = {o for i in nodes for o in g.node[i].output
                    if o in graph_outputs or any(c not in inside for c in consumers[o])}
        presents = [f"present.{l}.key", f"present.{l}.value"]
        pasts = [f"past_key_values.{l}.key", f"past_key_values.{l}.value"]
        if not all(p in escaping for p in presents):
            raise ExportError(f"onnx-elastic: block {l} does not produce {presents}")
        # the residual stream: the escaping value that the block's heavy work leads to
        heavy = {i for i in nodes if g.node[i].op_type in HEAVY_OPS}
        downstream = set()
        frontier = [o for i in heavy for o in g.node[i].output]
        while frontier:
            v = frontier.pop()
            if v in downstream:
                continue
            downstream.add(v)
            for c in consumers[v]:
                if c in inside:
                    frontier.extend(g.node[c].output)
        hidden_out = [o for o in escaping if o not in presents and o in downstream]
        if len(hidden_out) != 1:
            raise ExportError(f"onnx-elastic: block {l} hands {len(hidden_out)} computed values to the rest of the graph")
        extra = [o for o in escaping if o not in presents and o not in hidden_out]
        lift = set()
        stack = [producer[o] for o in extra]
        while stack:  # the extra values and their ancestors inside the block leave the If
            i = stack.pop()
            if i in lift or i not in inside:
                continue
            if g.node[i].op_type in HEAVY_OPS:
                raise ExportError(f"onnx-elastic: block {l} shares {g.node[i].op_type} work with other blocks")
            lift.add(i)
            stack.extend(producer[x] for x in g.node[i].input if x in producer)
        hoisted |= lift
        body = [i for i in nodes if i not in lift]
        # the stream into the block: what its first node reads from outside (the input norm's input)
        weights = {t.name for t in g.initializer}
        first = g.node[body[0]]
        outer = [x for x in first.input if x and x not in weights and (x not in producer or producer[x] not in set(body))]
        if len(outer) != 1:
            raise ExportError(f"onnx-elastic: cannot tell block {l}'s input stream")
        if l > 0 and outer[0] != blocks[-1]["out"]:
            raise ExportError(f"onnx-elastic: block {l} does not read block {l - 1}'s output")
        blocks.append({"body": body, "out": hidden_out[0], "pasts": pasts, "presents": presents, "in": outer})
    # Shapes read from one block's past outside that block (the exporter shares the past length
    # between blocks, which it traced as equal): rebuilt from the inputs every request has, since
    # a skipped block's past stays shorter than the others'
    past_names = {f"past_key_values.{l}.{kv}" for l in range(num_blocks) for kv in ("key", "value")}
    body_of = {i: l for l, b in enumerate(blocks) for i in b["body"]}
    shape_fix = {i for i, n in enumerate(g.node) if n.op_type == "Shape" and n.input[0] in past_names
                 and (i not in body_of or f".{body_of[i]}." not in n.input[0])}
    common = [
        helper.make_node("Shape", ["input_ids"], ["elastic_batch"], start=0, end=1),
        helper.make_node("Shape", ["input_ids"], ["elastic_new"], start=1, end=2),
        helper.make_node("Shape", ["attention_mask"], ["elastic_total"], start=1, end=2),
        helper.make_node("Sub", ["elastic_total", "elastic_new"], ["elastic_past"]),
    ] if shape_fix else []

    def fixed_shape(i: int) -> list:
        n = g.node[i]
        attrs = {a.name: a.i for a in n.attribute}
        past, tag = n.input[0], f"elastic_shape_{i}"
        return [
            helper.make_node("Shape", [past], [f"{tag}_heads"], start=1, end=2),
            helper.make_node("Shape", [past], [f"{tag}_dim"], start=3, end=4),
            helper.make_node("Concat", ["elastic_batch", f"{tag}_heads", "elastic_past", f"{tag}_dim"], [f"{tag}_full"], axis=0),
            helper.make_node("Constant", [], [f"{tag}_start"], value=helper.make_tensor(f"{tag}_s", TensorProto.INT64, [1], [attrs.get("start", 0)])),
            helper.make_node("Constant", [], [f"{tag}_end"], value=helper.make_tensor(f"{tag}_e", TensorProto.INT64, [1], [attrs.get("end", 4)])),
            helper.make_node("Slice", [f"{tag}_full", f"{tag}_start", f"{tag}_end"], list(n.output)),
        ]

    elem = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.output, *g.input]}
    float_type = elem.get("present.0.key", TensorProto.FLOAT)
    # build the new node list: everything outside blocks in order, each block's body as an If
    keep = helper.make_tensor_value_info("keep", TensorProto.BOOL, [num_blocks])
    # a mask of any other length is refused by the graph itself (Reshape to [num_blocks] fails)
    new_nodes = [helper.make_node("Constant", [], ["keep_shape"],
                                  value=helper.make_tensor("keep_shape_value", TensorProto.INT64, [1], [num_blocks])),
                 helper.make_node("Reshape", ["keep", "keep_shape"], ["keep_checked"]), *common]
    first_block_node = {min(b["body"]): l for l, b in enumerate(blocks)}
    body_nodes = {i for b in blocks for i in b["body"]}
    for i, n in enumerate(g.node):
        if i in first_block_node:
            l = first_block_node[i]
            b = blocks[l]
            suffix = f"__b{l}"
            produced = {o for j in b["body"] for o in g.node[j].output}
            then_nodes = []
            for j in b["body"]:
                node = onnx.NodeProto()
                node.CopyFrom(g.node[j])
                node.input[:] = [x + suffix if x in produced else x for x in node.input]
                node.output[:] = [x + suffix for x in node.output]
                node.name = node.name + suffix
                then_nodes.append(node)
            outs = [b["out"], *b["presents"]]
            then_graph = helper.make_graph(
                then_nodes, f"block{l}_run", [],
                [helper.make_tensor_value_info(o + suffix, elem.get(o, float_type) or float_type, None) for o in outs])
            skip_nodes = [helper.make_node("Identity", [src], [f"{dst}__skip{l}"])
                          for src, dst in zip([b["in"][0], *b["pasts"]], outs)]
            else_graph = helper.make_graph(
                skip_nodes, f"block{l}_skip", [],
                [helper.make_tensor_value_info(f"{o}__skip{l}", elem.get(o, float_type) or float_type, None) for o in outs])
            new_nodes.append(helper.make_node("Constant", [], [f"keep_index_{l}"],
                                              value=helper.make_tensor(f"keep_index_{l}", TensorProto.INT64, [], [l])))
            new_nodes.append(helper.make_node("Gather", ["keep_checked", f"keep_index_{l}"], [f"keep_{l}"], axis=0))
            new_nodes.append(helper.make_node("If", [f"keep_{l}"], outs, name=f"block_{l}",
                                              then_branch=then_graph, else_branch=else_graph))
        if i in body_nodes:
            continue
        new_nodes.extend(fixed_shape(i) if i in shape_fix else [g.node[i]])
    del g.node[:]
    g.node.extend(new_nodes)
    g.input.insert(3, keep)  # after input_ids, attention_mask, position_ids
    keep_outputs = {o for b in blocks for o in [b["out"], *b["presents"]]}
    kept_info = [v for v in g.value_info if v.name not in keep_outputs]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    for o in g.output:  # present shapes now differ by request (a skipped block's stays its past's)
        if o.name.startswith("present."):
            o.type.tensor_type.shape.dim[2].dim_param = f"present_sequence_{o.name.split('.')[1]}"
    onnx.save(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=out_path.name + ".data")
    return {"blocks": num_blocks, "hoisted_nodes": len(hoisted), "if_nodes": num_blocks, "shapes_rebuilt": len(shape_fix),
            "nodes_per_block": round(sum(len(b["body"]) for b in blocks) / num_blocks, 1)}


def _session(path: Path):
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _feeds(ids, mask, positions, past: dict, keep=None) -> dict:
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
    if keep is not None:
        feeds["keep"] = keep
    return feeds


def _empty_past(sess, batch: int) -> dict:
    import numpy as np

    out = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            out[i.name] = np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32)
    return out


def _presents(sess, out) -> dict:
    names = [o.name for o in sess.get_outputs()]
    return {n.replace("present.", "past_key_values."): v for n, v in zip(names, out) if n.startswith("present.")}


def verify(bm, path: Path, sets, atol: float = 1e-4, rtol: float = 1e-5) -> dict:
    """For each removal set: prefill and one decode step of the elastic graph with that mask vs the
    physically pruned model's full recompute (max |onnx - torch| <= atol + rtol * max |torch|), and
    every skipped block's cache slot still empty after the step."""
    import numpy as np
    import torch

    from blockprune.models import remove_blocks

    sess = _session(path)
    n = bm.num_blocks
    if [i.name for i in sess.get_inputs()][3] != "keep":
        raise ExportError("onnx-elastic: the graph has no `keep` input")
    rng = np.random.default_rng(0)
    ids = rng.integers(3, bm.head.weight.shape[0], (2, 7)).astype(np.int64)
    worst = 0.0
    for removed in sets:
        keep = np.array([b not in set(removed) for b in range(n)])
        mask = np.ones((2, 7), dtype=np.int64)
        pos = np.broadcast_to(np.arange(7), (2, 7)).astype(np.int64)
        out = sess.run(None, _feeds(ids, mask, pos, _empty_past(sess, 2), keep))
        token = out[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        out2 = sess.run(None, _feeds(token, np.ones((2, 8), dtype=np.int64), np.full((2, 1), 7, dtype=np.int64),
                                     _presents(sess, out), keep))
        pruned = remove_blocks(bm, removed) if removed else bm
        with torch.inference_mode():
            full = pruned.model(input_ids=torch.tensor(np.concatenate([ids, token], 1), device=bm.device),
                                use_cache=False).logits.float().cpu().numpy()
        for got, want in ((out[0], full[:, :7]), (out2[0][:, -1], full[:, -1])):
            diff = float(np.abs(got - want).max())
            worst = max(worst, diff / (atol + rtol * float(np.abs(want).max())))
            if diff > atol + rtol * float(np.abs(want).max()):
                raise ExportError(f"onnx-elastic with blocks {list(removed)} skipped differs from the pruned model: "
                                  f"max abs diff {diff:.3g}")
        for l in removed:
            if _presents(sess, out2)[f"past_key_values.{l}.key"].shape[2] != 0:
                raise ExportError(f"onnx-elastic: skipped block {l}'s cache slot was written")
    return {"sets_checked": [list(s) for s in sets], "worst_diff_over_tolerance": round(worst, 4), "atol": atol, "rtol": rtol}


def decode_ms(sess, keep, prompt: int = 32, steps: int = 16, vocab: int = 100) -> float:
    """Median decode-step time (ms) of greedy generation, batch 1."""
    import time

    import numpy as np

    ids = np.random.default_rng(1).integers(3, vocab, (1, prompt)).astype(np.int64)
    out = sess.run(None, _feeds(ids, np.ones((1, prompt), np.int64), np.arange(prompt)[None].astype(np.int64),
                                _empty_past(sess, 1), keep))
    times = []
    for s in range(steps):
        token = out[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        t = time.perf_counter()
        out = sess.run(None, _feeds(token, np.ones((1, prompt + s + 1), np.int64),
                                    np.array([[prompt + s]], dtype=np.int64), _presents(sess, out), keep))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def speed(elastic_path: Path, dense_path: Path, pruned_path: Path, num_blocks: int, removed, vocab: int,
          reps: int = 5) -> dict:
    """Decode speedup of skipping `removed` in the elastic graph vs that of the fixed pruned graph
    over the fixed dense one, runs interleaved; the elastic one should reach 90% of the fixed one."""
    import numpy as np

    el, dense, pruned = _session(elastic_path), _session(dense_path), _session(pruned_path)
    all_keep = np.ones(num_blocks, dtype=bool)
    k_keep = np.array([b not in set(removed) for b in range(num_blocks)])
    runs = {"elastic_dense": [], "elastic_pruned": [], "fixed_dense": [], "fixed_pruned": []}
    for _ in range(reps):
        runs["elastic_dense"].append(decode_ms(el, all_keep, vocab=vocab))
        runs["fixed_dense"].append(decode_ms(dense, None, vocab=vocab))
        runs["fixed_pruned"].append(decode_ms(pruned, None, vocab=vocab))
        runs["elastic_pruned"].append(decode_ms(el, k_keep, vocab=vocab))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    elastic_speedup = med["elastic_dense"] / med["elastic_pruned"]
    fixed_speedup = med["fixed_dense"] / med["fixed_pruned"]
    return {"decode_ms": {k: round(v, 3) for k, v in med.items()}, "elastic_speedup": round(elastic_speedup, 4),
            "fixed_speedup": round(fixed_speedup, 4), "elastic_over_fixed": round(elastic_speedup / fixed_speedup, 4),
            "reaches_90pct_of_fixed": elastic_speedup >= 0.9 * fixed_speedup, "reps": reps}
