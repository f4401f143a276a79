"""Small valid ONNX graphs with the bundle's signature, for the op check and the ATC runner tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_llm_onnx(
    path: Path,
    *,
    layers=5,
    kv_heads=4,
    head_dim=8,
    kv_len=64,
    hidden=16,
    vocab=32,
    dialect="s8s8",
    extra_nodes=(),
    opset=17,
) -> Path:
    """A small valid ONNX graph with docs/design.md §3's inputs/outputs and one W8A8 matmul.

    dialect: "s8s8" (int8 x int8, no zero points), "s8s8_zp0" (explicit zero zero-points),
    "u8u8" (uint8 with zero point 128: the onnxruntime dialect), or "fp" (plain MatMul).
    """
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), "embed"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(-127, np.float32), "q_min"),
        numpy_helper.from_array(np.array(127, np.float32), "q_max"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["h"], name="embed_tokens"),
        helper.make_node("Div", ["h", "x_scale"], ["h_div"]),
        helper.make_node("Round", ["h_div"], ["h_round"]),
        helper.make_node("Clip", ["h_round", "q_min", "q_max"], ["h_clip"]),
    ]
    w = rng.integers(-127, 128, size=(hidden, vocab))
    if dialect == "fp":
        inits.append(numpy_helper.from_array(w.astype(np.float32), "w"))
        nodes.append(helper.make_node("MatMul", ["h_clip", "w"], ["logits_raw"]))
    else:
        if dialect == "u8u8":
            x_type, w_arr = TensorProto.UINT8, (w + 128).astype(np.uint8)
            zps = [numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
                   numpy_helper.from_array(np.array(128, np.uint8), "w_zp")]
        else:
            x_type, w_arr = TensorProto.INT8, w.astype(np.int8)
            zps = ([numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
                    numpy_helper.from_array(np.array(0, np.int8), "w_zp")] if dialect == "s8s8_zp0" else [])
        inits += [numpy_helper.from_array(w_arr, "w")] + zps
        mm_inputs = ["h_q", "w"] + [z.name for z in zps]
        nodes += [
            helper.make_node("Cast", ["h_clip"], ["h_q"], to=x_type),
            helper.make_node("MatMulInteger", mm_inputs, ["acc"], name="lm_head_q"),
            helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["acc_f", "x_scale"], ["logits_raw"]),
        ]
    nodes += [helper.make_node("Softmax", ["logits_raw"], ["logits"], axis=-1),
              helper.make_node("Identity", ["past_key_values"], ["present_key_values"])]
    nodes += list(extra_nodes)
    kv_shape = [2 * layers, kv_heads, kv_len, head_dim]
    graph = helper.make_graph(
        nodes,
        "tiny_llm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "S"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "M"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "S"]),
            helper.make_tensor_value_info("past_key_values", TensorProto.FLOAT, kv_shape),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "S", vocab]),
            helper.make_tensor_value_info("present_key_values", TensorProto.FLOAT, kv_shape),
        ],
        initializer=inits,
    )
    imports = [helper.make_opsetid("", opset)]
    if any(n.domain == "com.microsoft" for n in nodes):
        imports.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=imports)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
