"""onnxruntime CPU backend. The KV cache array is bound by pointer (IOBinding), and outputs go into
buffers preallocated per chunk size, so a decode step copies nothing but the new token's K/V."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from board.backends.base import INPUT_NAMES, OUTPUT_NAMES, Backend
from board.manifest import BundleError, Graph


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, graph: Graph, vocab_size: int, threads: int | None = None):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # keep onnxruntime's optimizer warnings off the chat screen
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad/missing files
            raise BundleError(f"{onnx_path}: onnxruntime cannot load it ({e}); rebuild the bundle") from None
        names = {i.name for i in self.session.get_inputs()}
        outs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in INPUT_NAMES if n not in names] + [n for n in OUTPUT_NAMES if n not in outs]
        if missing:
            raise BundleError(f"{onnx_path}: graph lacks {', '.join(missing)} (DESIGN.md §3); rebuild the bundle")
        self.graph = graph
        self.vocab_size = vocab_size
        self._outputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _output_buffers(self, s: int, kv_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        if s not in self._outputs:
            rows = s if self.graph.logits == "all" else 1
            present_shape = kv_shape[:4] + (s,) + kv_shape[5:]
            self._outputs[s] = (
                np.empty((1, rows, self.vocab_size), dtype=np.float32),
                np.empty(present_shape, dtype=self.graph.kv_dtype),
            )
        return self._outputs[s]

    def forward(self, input_ids, attention_mask, position_ids, past_key_values):
        binding = self.session.io_binding()
        # the list keeps any contiguous copies alive until the run; for the cache's buffer it is a no-op
        inputs = [np.ascontiguousarray(a) for a in (input_ids, attention_mask, position_ids, past_key_values)]
        for name, arr in zip(INPUT_NAMES, inputs):
            binding.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
        logits, present = self._output_buffers(input_ids.shape[1], past_key_values.shape)
        for name, arr in zip(OUTPUT_NAMES, (logits, present)):
            binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits, present
