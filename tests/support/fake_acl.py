"""FakeAcl: a TEST DOUBLE of pyACL's `acl` module (CANN), for testing board/backends/acl.py here.

It implements exactly the calls the acl backend makes, with pyACL's signatures and (value, ret)
return conventions, on real process memory: acl.rt.malloc hands out addresses of numpy buffers and
acl.rt.memcpy moves bytes with ctypes. "Executing" a model runs the bundle's model.onnx with
onnxruntime on the bytes found in the input buffers. The .om it loads is a JSON stand-in written
by `write_fake_om`, describing the gears ATC would have compiled (one per prefill chunk size) and
holding the ONNX itself, as a real .om holds the model. acl.mdl.load_from_mem takes it from memory
of the kind pyACL documents for the run mode (device memory on the board's own CPU, host memory
otherwise), as acl.mdl.load_from_file takes it from a path.
It checks what real ACL would reject: unknown handles, oversized copies, dims that are no gear,
execution without dims, and it reports anything left allocated. Like real device memory, what
acl.rt.malloc hands out is not zeroed: it is filled with 0xFF bytes (NaN in fp16 and fp32).
ACL contexts are per thread: a call from a thread without a current context fails.
"""
from __future__ import annotations

import base64
import ctypes
import itertools
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort

from board.manifest import file_entries, load_manifest, write_manifest

ACL_DEVICE, ACL_HOST = 0, 1
H2D, D2H = 1, 2
ERR_INVALID_PARAM = 100000
ERR_REPEAT_INIT = 100002
ERR_CONTEXT_NULL = 107002  # ACL_ERROR_RT_CONTEXT_NULL
ERR_DESERIALIZE_MODEL = 100012  # ACL_ERROR_DESERIALIZE_MODEL
DYNAMIC_INPUT = "ascend_mbatch_shape_data"
ACL_DTYPE = {"float32": 0, "float16": 1, "int64": 9}
NP_DTYPE = {v: k for k, v in ACL_DTYPE.items()}


def write_fake_om(bundle_dir: Path) -> Path:
    """Write the JSON stand-in `model.om` for a bundle and register it in the manifest (graph.om, files)."""
    import dataclasses

    bundle_dir = Path(bundle_dir)
    m = load_manifest(bundle_dir)
    a, g = m.arch, m.graph
    kv_shape = next(list(t.shape) for t in g.inputs if t.name == "past_key_values")  # the graph's layout

    def input_shapes(s):
        return [[1, s], [1, g.kv_len + s], [1, s], kv_shape]

    gears = [list(itertools.chain(*input_shapes(s))) for s in sorted(set(g.prefill_chunks) | {1})]
    top = max(g.prefill_chunks)
    itemsize = np.dtype(g.kv_dtype).itemsize
    om = {
        "onnx": g.onnx,
        "onnx_bytes": base64.b64encode((bundle_dir / g.onnx).read_bytes()).decode(),  # the model travels with the .om
        "inputs": [
            {"name": n, "dtype": d, "ndim": len(shape), "size": int(np.prod(shape)) * np.dtype(d).itemsize}
            for n, d, shape in zip(
                ("input_ids", "attention_mask", "position_ids", "past_key_values"),
                ("int64", "int64", "int64", g.kv_dtype),
                input_shapes(top),
            )
        ] + [{"name": DYNAMIC_INPUT, "dtype": "int64", "ndim": 1, "size": 8 * len(gears[0])}],
        "outputs": [
            {"name": "logits", "dtype": "float32", "size": 4 * top * a.vocab_size},
            {"name": "present_key_values", "dtype": g.kv_dtype, "size": itemsize * a.num_layers * 2 * a.num_kv_heads * top * a.head_dim},
        ],
        "gears": gears,
    }
    (bundle_dir / "model.om").write_text(json.dumps(om))
    files = dict(m.files)
    files.update(file_entries(bundle_dir, ["model.om"]))
    write_manifest(bundle_dir, dataclasses.replace(m, graph=dataclasses.replace(g, om="model.om"), files=files))
    return bundle_dir / "model.om"


class FakeAcl:
    """Install with monkeypatch.setitem(sys.modules, "acl", FakeAcl(run_mode=...))."""

    def __init__(self, run_mode: int = ACL_HOST):
        self.run_mode = run_mode
        self.calls: list[str] = []
        self.memory: dict[int, np.ndarray] = {}  # device memory (acl.rt.malloc)
        self.host_memory: dict[int, np.ndarray] = {}  # acl.rt.malloc_host
        self.data_buffers: dict[int, tuple[int, int]] = {}
        self.datasets: dict[int, list[int]] = {}
        self.models: dict[int, dict] = {}
        self.descs: dict[int, int | None] = {}
        self.dims: dict[int, list[int]] = {}  # dataset -> dynamic dims set for it
        self.d2h: list[int] = []  # bytes of each device->host copy, in order
        self.contexts: set[int] = set()
        self.current: dict[int, int] = {}  # thread id -> its current context
        self.initialized = False
        self.device = None
        self._ids = itertools.count(1000)
        self.rt = SimpleNamespace(**{n: getattr(self, f"rt_{n}") for n in (
            "set_device", "reset_device", "create_context", "destroy_context", "get_run_mode", "malloc", "free", "memcpy", "memset",
            "set_context", "malloc_host", "free_host")})
        self.mdl = SimpleNamespace(**{n: getattr(self, f"mdl_{n}") for n in (
            "load_from_file", "load_from_mem", "unload", "create_desc", "get_desc", "destroy_desc", "get_num_inputs", "get_num_outputs",
            "get_input_name_by_index", "get_output_name_by_index", "get_input_size_by_index", "get_output_size_by_index",
            "get_input_index_by_name", "get_output_data_type", "get_cur_output_dims", "create_dataset",
            "add_dataset_buffer", "destroy_dataset", "set_input_dynamic_dims", "execute")})

    # --- bookkeeping -----------------------------------------------------------------------
    def _log(self, name):
        self.calls.append(name)

    def leaks(self) -> list[str]:
        """Anything still allocated or initialised (empty after a correct teardown)."""
        out = [f"{len(v)} {k}" for k, v in (("device buffers", self.memory), ("host buffers", self.host_memory),
                                             ("data buffers", self.data_buffers),
                                             ("datasets", self.datasets), ("models", self.models),
                                             ("descs", self.descs), ("contexts", self.contexts)) if v]
        return out + (["acl not finalized"] if self.initialized else []) + (["device not reset"] if self.device is not None else [])

    # --- acl ----------------------------------------------------------------------------------
    def init(self, config_path: str = ""):
        self._log("init")
        if self.initialized:
            return ERR_REPEAT_INIT
        self.initialized = True
        return 0

    def finalize(self):
        self._log("finalize")
        self.initialized = False
        return 0

    def create_data_buffer(self, ptr, size):
        self._log("create_data_buffer")
        if ptr not in self.memory or size > self.memory[ptr].nbytes:
            return 0
        handle = next(self._ids)
        self.data_buffers[handle] = (ptr, size)
        return handle

    def destroy_data_buffer(self, handle):
        self._log("destroy_data_buffer")
        return 0 if self.data_buffers.pop(handle, None) else ERR_INVALID_PARAM

    # --- acl.rt ------------------------------------------------------------------------------
    def rt_set_device(self, device_id):
        self._log("rt.set_device")
        self.device = device_id
        return 0 if self.initialized else ERR_INVALID_PARAM

    def rt_reset_device(self, device_id):
        self._log("rt.reset_device")
        self.device = None
        return 0

    def rt_create_context(self, device_id):
        self._log("rt.create_context")
        handle = next(self._ids)
        self.contexts.add(handle)
        self.current[threading.get_ident()] = handle  # a new context becomes the thread's current one
        return handle, 0

    def rt_set_context(self, context):
        self._log("rt.set_context")
        if context not in self.contexts:
            return ERR_INVALID_PARAM
        self.current[threading.get_ident()] = context
        return 0

    def _check_context(self):
        return 0 if self.current.get(threading.get_ident()) in self.contexts else ERR_CONTEXT_NULL

    def rt_destroy_context(self, context):
        self._log("rt.destroy_context")
        if context not in self.contexts:
            return ERR_INVALID_PARAM
        self.contexts.discard(context)
        return 0

    def rt_get_run_mode(self):
        self._log("rt.get_run_mode")
        return self.run_mode, 0

    def rt_malloc(self, size, policy):
        self._log("rt.malloc")
        buf = np.full(max(size, 1), 0xFF, dtype=np.uint8)  # not zeroed, like device memory
        self.memory[buf.ctypes.data] = buf
        return buf.ctypes.data, 0

    def rt_free(self, ptr):
        self._log("rt.free")
        return 0 if self.memory.pop(ptr, None) is not None else ERR_INVALID_PARAM

    def rt_malloc_host(self, size):
        self._log("rt.malloc_host")
        buf = np.full(max(size, 1), 0xFF, dtype=np.uint8)
        self.host_memory[buf.ctypes.data] = buf
        return buf.ctypes.data, 0

    def rt_free_host(self, ptr):
        self._log("rt.free_host")
        return 0 if self.host_memory.pop(ptr, None) is not None else ERR_INVALID_PARAM

    def rt_memset(self, ptr, max_count, value, count):
        self._log("rt.memset")
        if count > max_count or not self._device_range(ptr, count) or not 0 <= value <= 255:
            return ERR_INVALID_PARAM
        ctypes.memset(ptr, value, count)
        return 0

    def _device_range(self, ptr, count, memory=None):
        memory = self.memory if memory is None else memory
        return any(base <= ptr and ptr + count <= base + buf.nbytes for base, buf in memory.items())

    def rt_memcpy(self, dst, dst_max, src, count, kind):
        self._log("rt.memcpy")
        if count > dst_max:
            return ERR_INVALID_PARAM
        on_device = (dst, count) if kind == H2D else (src, count)
        on_host = (src, count) if kind == H2D else (dst, count)
        if kind not in (H2D, D2H) or not self._device_range(*on_device) or self._device_range(*on_host):
            return ERR_INVALID_PARAM
        ctypes.memmove(dst, src, count)
        if kind == D2H:
            self.d2h.append(count)
        return 0

    # --- acl.mdl -----------------------------------------------------------------------------
    def mdl_load_from_file(self, path):
        self._log("mdl.load_from_file")
        try:
            data = Path(path).read_bytes()
        except OSError:
            return 0, 500002  # ACL_ERROR_READ_MODEL_FAILURE-style code
        return self._load(data)

    def mdl_load_from_mem(self, model, model_size):
        """pyACL: model_id, ret = acl.mdl.load_from_mem(model, model_size); the bytes must lie in device memory when
        the program runs on the device (RC, the 310B boards) and in host memory otherwise."""
        self._log("mdl.load_from_mem")
        memory = self.memory if self.run_mode == ACL_DEVICE else self.host_memory
        if not self._device_range(model, model_size, memory):
            return 0, ERR_INVALID_PARAM
        return self._load(ctypes.string_at(model, model_size))

    def _load(self, data: bytes):
        try:
            om = json.loads(data)
            onnx = base64.b64decode(om["onnx_bytes"])
        except (ValueError, KeyError, TypeError):
            return 0, ERR_DESERIALIZE_MODEL
        om["session"] = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        model_id = next(self._ids)
        self.models[model_id] = om
        return model_id, 0

    def mdl_unload(self, model_id):
        self._log("mdl.unload")
        return 0 if self.models.pop(model_id, None) else ERR_INVALID_PARAM

    def mdl_create_desc(self):
        self._log("mdl.create_desc")
        handle = next(self._ids)
        self.descs[handle] = None
        return handle

    def mdl_get_desc(self, desc, model_id):
        self._log("mdl.get_desc")
        if desc not in self.descs or model_id not in self.models:
            return ERR_INVALID_PARAM
        self.descs[desc] = model_id
        return 0

    def mdl_destroy_desc(self, desc):
        self._log("mdl.destroy_desc")
        return 0 if self.descs.pop(desc, 0) is not None else ERR_INVALID_PARAM

    def _om(self, desc):
        return self.models[self.descs[desc]]

    def mdl_get_num_inputs(self, desc):
        return len(self._om(desc)["inputs"])

    def mdl_get_num_outputs(self, desc):
        return len(self._om(desc)["outputs"])

    def mdl_get_input_name_by_index(self, desc, i):
        return self._om(desc)["inputs"][i]["name"]

    def mdl_get_output_name_by_index(self, desc, i):
        return self._om(desc)["outputs"][i]["name"]

    def mdl_get_input_size_by_index(self, desc, i):
        return self._om(desc)["inputs"][i]["size"]

    def mdl_get_output_size_by_index(self, desc, i):
        return self._om(desc)["outputs"][i]["size"]

    def mdl_get_output_data_type(self, desc, i):
        return ACL_DTYPE[self._om(desc)["outputs"][i]["dtype"]]

    def mdl_get_input_index_by_name(self, desc, name):
        names = [x["name"] for x in self._om(desc)["inputs"]]
        return (names.index(name), 0) if name in names else (0, ERR_INVALID_PARAM)

    def mdl_get_cur_output_dims(self, desc, i):
        dims = self._om(desc).get("cur_dims")
        if dims is None:
            return {}, ERR_INVALID_PARAM
        return {"name": self._om(desc)["outputs"][i]["name"], "dimCount": len(dims[i]), "dims": list(dims[i])}, 0

    def mdl_create_dataset(self):
        self._log("mdl.create_dataset")
        handle = next(self._ids)
        self.datasets[handle] = []
        return handle

    def mdl_add_dataset_buffer(self, dataset, data_buffer):
        self._log("mdl.add_dataset_buffer")
        if dataset not in self.datasets or data_buffer not in self.data_buffers:
            return dataset, ERR_INVALID_PARAM
        self.datasets[dataset].append(data_buffer)
        return dataset, 0

    def mdl_destroy_dataset(self, dataset):
        self._log("mdl.destroy_dataset")
        return 0 if self.datasets.pop(dataset, None) is not None else ERR_INVALID_PARAM

    def mdl_set_input_dynamic_dims(self, model_id, dataset, index, dims):
        self._log("mdl.set_input_dynamic_dims")
        om = self.models.get(model_id)
        if om is None or om["inputs"][index]["name"] != DYNAMIC_INPUT or dims["dimCount"] != len(dims["dims"]):
            return ERR_INVALID_PARAM
        if list(dims["dims"]) not in om["gears"]:
            return ERR_INVALID_PARAM  # not one of the compiled profiles
        self.dims[dataset] = list(dims["dims"])
        return 0

    def mdl_execute(self, model_id, in_ds, out_ds):
        self._log("mdl.execute")
        om = self.models.get(model_id)
        if om is None or in_ds not in self.dims:
            return ERR_INVALID_PARAM
        if self._check_context():
            return self._check_context()
        flat, feeds = list(self.dims[in_ds]), {}
        for spec, handle in zip(om["inputs"], self.datasets[in_ds]):
            if spec["name"] == DYNAMIC_INPUT:
                continue
            shape, flat = flat[: spec["ndim"]], flat[spec["ndim"] :]
            ptr, _ = self.data_buffers[handle]
            nbytes = int(np.prod(shape)) * np.dtype(spec["dtype"]).itemsize
            feeds[spec["name"]] = self._bytes(ptr, nbytes).view(spec["dtype"]).reshape(shape).copy()
        results = om["session"].run([o["name"] for o in om["outputs"]], feeds)
        for spec, handle, value in zip(om["outputs"], self.datasets[out_ds], results):
            ptr, size = self.data_buffers[handle]
            raw = np.ascontiguousarray(value, dtype=spec["dtype"]).reshape(-1).view(np.uint8)
            if raw.nbytes > size:
                return ERR_INVALID_PARAM
            self._bytes(ptr, raw.nbytes)[:] = raw
        om["cur_dims"] = [list(r.shape) for r in results]
        return 0

    @staticmethod
    def _bytes(ptr, nbytes):
        return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=np.uint8)
