"""onnxruntime CPU backend. One IOBinding per chunk size, made once: the KV cache is bound by
pointer where it lives, and outputs land in preallocated buffers, so a step copies no KV data.
For a graph.cache "inplace" graph each layer's slab of the cache is bound as both its past and its
present, so GroupQueryAttention writes the new keys/values straight into the board's cache."""
from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from board.backends.base import Backend, io_names
from board.errors import BoardError
from board.manifest import BundleError, Graph
from board.ortneeds import onnxruntime_shortfall


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


def keep_load_memory_returnable() -> None:
    """Serve allocations of 1 MiB and more from mmap, so the model's bytes go back to the OS once loaded.

    glibc raises its mmap threshold (up to 32 MiB) after the first large free; the weights' copies
    that onnxruntime frees after packing them then stay in the heap, and peak memory varied from
    run to run (22-layer TinyLlama shape: 1.29-1.73 GB; fixed, 1.29 GB). A fixed threshold stops the
    adjustment. No-op where the C library has no mallopt (not glibc).
    """
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)  # the C library this process runs on
    except (OSError, AttributeError):
        pass


def check_onnxruntime(onnx_path: Path, graph: Graph) -> None:
    """BundleError saying what to do when this onnxruntime is older than the graph needs (board/ortneeds.py)."""
    shortfall = onnxruntime_shortfall(graph.min_onnxruntime, graph.onnxruntime_ops, ort.__version__, sys.version_info)
    if shortfall:
        raise BundleError(f"{onnx_path}: {shortfall}")


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, graph: Graph, vocab_size: int, threads: int | None = None, spin: bool = True,
                 tune=None, disabled_optimizers: list | None = None):
        """`tune(options)` may change the SessionOptions last (bench/profile_decode.py compares them)."""
        check_onnxruntime(onnx_path, graph)  # before onnxruntime sees the graph: its own errors do not say what to do
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        # idle worker threads spin for the next op: faster on free cores, slower when cores are shared
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3  # keep onnxruntime's optimizer warnings off the chat screen
        if tune:
            tune(opts)
        keep_load_memory_returnable()
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=disabled_optimizers or None)
        except Exception as e:  # onnxruntime raises its own exception types for bad/missing files
            raise BundleError(f"{onnx_path}: onnxruntime cannot load it ({e}); rebuild the bundle") from None
        names = {i.name for i in self.session.get_inputs()}
        outs = {o.name for o in self.session.get_outputs()}
        self._names = io_names(graph)
        missing = [n for n in self._names[0] if n not in names] + [n for n in self._names[1] if n not in outs]
        if missing:
            raise BundleError(f"{onnx_path}: graph lacks {', '.join(missing)} (docs/design.md §3); rebuild the bundle")
        self.path = onnx_path
        self.graph = graph
        self.vocab_size = vocab_size
        self._bound: dict[tuple, _Binding] = {}

    def _binding(self, s: int, past: np.ndarray, last_only: bool) -> "_Binding":
        """The IOBinding for chunk size s (and, for a graph.logits "index" graph, the rows wanted), made once."""
        index = self.graph.logits == "index"
        key = (s, last_only and index)
        bound = self._bound.get(key)
        if bound is None or bound.past_ptr != past.ctypes.data:
            rows = 1 if index and last_only else s
            inputs = [np.zeros((1, s), np.int64), np.zeros((1, self.graph.kv_len + s), np.int64), np.zeros((1, s), np.int64)]
            if index:  # constant per binding: which chunk rows get logits
                inputs.append(np.arange(s - rows, s, dtype=np.int64))
            outputs = [np.empty((1, rows, self.vocab_size), np.float32)]
            if self.graph.cache == "inplace":
                slabs = [past[i, kind] for i in range(past.shape[0]) for kind in (0, 1)]  # [1,Hkv,KV,D], contiguous
                if len(slabs) != len(self._names[0]) - len(inputs):
                    raise BundleError(f"{self.path}: the manifest lists {len(self._names[0]) - len(inputs)} KV inputs "
                                      f"for {past.shape[0]} layers; rebuild the bundle")
                inputs, outputs = inputs + slabs, outputs + slabs
            else:
                inputs.append(past)
                outputs.append(np.empty(past.shape[:-2] + (s,) + past.shape[-1:], past.dtype))  # KV axis -> S
            bound = _Binding(binding=self.session.io_binding(), past_ptr=past.ctypes.data, inputs=inputs, outputs=outputs)
            for name, arr in zip(self._names[0], bound.inputs):
                bound.binding.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
            for name, arr in zip(self._names[1], bound.outputs):
                bound.binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
            self._bound[key] = bound
        return bound

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, last_only=False):
        if not past_key_values.flags.c_contiguous:
            if self.graph.cache == "inplace":  # the graph would update a copy and the cache would never see it
                raise BoardError("an inplace-cache graph needs the KV cache as one C-contiguous array")
            past_key_values = np.ascontiguousarray(past_key_values)
        bound = self._binding(input_ids.shape[1], past_key_values, last_only)
        # the small inputs are copied into the bound arrays; the KV cache is read where it lives
        for dst, src in zip(bound.inputs[:3], (input_ids, attention_mask, position_ids)):
            np.copyto(dst, src)
        try:
            self.session.run_with_iobinding(bound.binding)
        except Exception as e:  # onnxruntime's Fail/InvalidArgument carry the node that failed
            raise BoardError(f"{self.path}: onnxruntime failed on a {input_ids.shape[1]}-token step ({e})") from None
        return bound.outputs[0], None if self.graph.cache == "inplace" else bound.outputs[1]


@dataclass
class _Binding:
    binding: ort.IOBinding
    past_ptr: int
    inputs: list
    outputs: list
