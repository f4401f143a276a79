"""Ascend backend through pyACL (the `acl` module shipped with CANN), for a bundle's model.om.

Lifecycle: acl.init -> rt.set_device -> rt.create_context -> mdl.load_from_mem -> model desc ->
one input and one output dataset of device buffers sized for the largest compiled gear; each step
copies inputs in, sets the dynamic dims of the chunk size (ATC --dynamic_dims gears, input
"ascend_mbatch_shape_data"), executes, and reads outputs back at their current dims. Teardown
runs in reverse, every step even after one fails, then raises the first failure. Every return
code is checked. Device memory is zeroed after malloc: masked KV slots still enter the attention
product, and garbage there (a NaN) would spread to every logit.

On the Orange Pi AI Pro (Ascend 310B SoC) the program runs on the board's own CPU
(rt.get_run_mode() == ACL_DEVICE) and host and device share memory: buffers are then read and
written in place and the KV cache lives in the device buffer itself, so nothing is copied.

The .om is read in chunks into one ACL buffer and loaded with acl.mdl.load_from_mem, as
Tlntin/qwen-ascend-llm ended up doing on the same board: pyACL documents that on a 310B running
on its own CPU (RC mode) the model must be in device memory (acl.rt.malloc), on a host with a
card in host memory (acl.rt.malloc_host). ACL copies the model while loading, so the buffer is
freed right after: for that moment the board holds the .om twice (fab doctor counts it).
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path

import numpy as np

from board.backends.base import INPUT_NAMES, OUTPUT_NAMES, Backend
from board.errors import BoardError
from board.manifest import BundleError, Graph

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_DEVICE, ACL_HOST = 0, 1  # aclrtRunMode
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST = 1, 2
# One read() returns at most ~2 GiB on Linux, so a large .om is read in pieces straight into the ACL buffer.
LOAD_CHUNK = 64 << 20
DYNAMIC_INPUT = "ascend_mbatch_shape_data"  # ACL_DYNAMIC_TENSOR_NAME
ACL_DTYPES = {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32, 4: np.uint8, 9: np.int64}


def check(ret: int, call: str) -> None:
    """Raise BoardError for a non-zero ACL return code, naming the call."""
    if ret != ACL_SUCCESS:
        raise BoardError(
            f"{call} failed with ACL error {ret}; see the CANN log (ASCEND_GLOBAL_LOG_LEVEL=1) for details"
        )


def host_view(ptr: int, nbytes: int) -> np.ndarray:
    """uint8 numpy view of memory at ptr (valid where host and device memory are shared)."""
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=np.uint8)


class _Buffer:
    """One device buffer in a dataset: address, capacity, and (shared memory only) a host view."""

    def __init__(self, acl, name: str, size: int, shared: bool):
        self.name, self.size = name, size
        self.ptr, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
        check(ret, f"acl.rt.malloc({size}) for {name}")
        try:
            zero(acl, self.ptr, size, name)
            self.data_buffer = acl.create_data_buffer(self.ptr, size)
            if not self.data_buffer:
                raise BoardError(f"acl.create_data_buffer failed for {name}")
        except BoardError:
            acl.rt.free(self.ptr)
            raise
        self.view = host_view(self.ptr, size) if shared else None


def read_into(path: Path, view: np.ndarray, chunk: int = LOAD_CHUNK) -> None:
    """Fill the uint8 `view` with the file's bytes, `chunk` at a time; BoardError if the file is shorter."""
    done = 0
    with open(path, "rb", buffering=0) as f:
        while done < view.nbytes:
            n = f.readinto(memoryview(view[done : done + chunk]))
            if not n:
                raise BoardError(f"{path}: ended after {done} of {view.nbytes} bytes while loading; is the disk full or "
                                 "the file being replaced? (`python -m board verify` checks the bundle)")
            done += n


def zero(acl, ptr: int, size: int, name: str) -> None:
    """Fill device memory with zeros (acl.rt.malloc hands out whatever was there)."""
    check(acl.rt.memset(ptr, size, 0, size), f"acl.rt.memset({size}) for {name}")


class AclBackend(Backend):
    name = "acl"

    def __init__(self, om_path: Path, graph: Graph, device_id: int = 0):
        if graph.cache != "slots":
            raise BundleError(f"{om_path}: graph.cache {graph.cache!r} is onnxruntime's GroupQueryAttention layout; "
                              "the NPU runs the docs/design.md §3 graph: rebuild with --target ascend")
        from board.backends import acl_import_error

        problem = acl_import_error()  # the module's own error, not a generic "install CANN"
        if problem:
            raise BoardError(problem)
        import acl  # noqa: PLC0415 - lazily: only boards with CANN have it
        self.acl, self.graph, self.device_id = acl, graph, device_id
        self._closed = False
        self._context = self._model_id = self._desc = None
        self._inputs: list[_Buffer] = []
        self._outputs: list[_Buffer] = []
        self._datasets: list[int] = []
        self._thread = threading.get_ident()
        ret = acl.init()
        # ACL already initialised by another component in this process: it owns acl.finalize too
        self._owns_acl = ret != ACL_ERROR_REPEAT_INITIALIZE
        if self._owns_acl:
            check(ret, "acl.init")
        try:
            self._open(Path(om_path))
        except BaseException:
            with contextlib.suppress(BoardError):  # report the first failure, not a teardown one
                self.close()
            raise

    def _open(self, om_path: Path) -> None:
        acl = self.acl
        check(acl.rt.set_device(self.device_id), f"acl.rt.set_device({self.device_id})")
        self._context, ret = acl.rt.create_context(self.device_id)
        check(ret, "acl.rt.create_context")
        mode, ret = acl.rt.get_run_mode()
        check(ret, "acl.rt.get_run_mode")
        self.shared = mode == ACL_DEVICE
        model_id = self._load(om_path)
        self._desc = acl.mdl.create_desc()
        check(acl.mdl.get_desc(self._desc, model_id), "acl.mdl.get_desc")
        self._in_ds = self._dataset(acl.mdl.get_num_inputs(self._desc), acl.mdl.get_input_name_by_index,
                                    acl.mdl.get_input_size_by_index, self._inputs)
        self._out_ds = self._dataset(acl.mdl.get_num_outputs(self._desc), acl.mdl.get_output_name_by_index,
                                     acl.mdl.get_output_size_by_index, self._outputs)
        names = [b.name for b in self._inputs]
        missing = [n for n in INPUT_NAMES if n not in names]
        if missing:
            raise BundleError(f"{om_path}: model inputs {names} lack {missing} (docs/design.md §3); recompile the bundle")
        self._in_index = [names.index(n) for n in INPUT_NAMES]
        self._dynamic_index = None
        if DYNAMIC_INPUT in names:
            index, ret = acl.mdl.get_input_index_by_name(self._desc, DYNAMIC_INPUT)
            check(ret, "acl.mdl.get_input_index_by_name")
            self._dynamic_index = index
        out_names = [b.name for b in self._outputs]
        # ATC may rename graph outputs; fall back to the contract's order (logits, present)
        self._out_index = [out_names.index(n) if n in out_names else i for i, n in enumerate(OUTPUT_NAMES)]
        self._out_dtype = [ACL_DTYPES[acl.mdl.get_output_data_type(self._desc, i)] for i in self._out_index]

    def _load(self, om_path: Path) -> int:
        """The model id of the .om, loaded from a temporary ACL buffer of the memory kind the run mode needs."""
        acl, size = self.acl, om_path.stat().st_size
        alloc, free = ((lambda: acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)), acl.rt.free) if self.shared else \
            ((lambda: acl.rt.malloc_host(size)), acl.rt.free_host)
        ptr, ret = alloc()
        check(ret, f"allocating {size} bytes to load {om_path.name}")
        try:
            read_into(om_path, host_view(ptr, size))
            model_id, ret = acl.mdl.load_from_mem(ptr, size)
        finally:
            freed = free(ptr)
        if ret != ACL_SUCCESS:
            raise BundleError(
                f"{om_path}: acl.mdl.load_from_mem failed with ACL error {ret}; the .om must be compiled "
                "for this SoC and CANN version (`python -m host compile`)"
            )
        self._model_id = model_id  # unloaded by close() even if the free below fails
        check(freed, f"freeing the load buffer of {om_path.name}")
        return model_id

    def _dataset(self, count: int, name_of, size_of, buffers: list) -> int:
        acl = self.acl
        dataset = acl.mdl.create_dataset()
        self._datasets.append(dataset)
        for i in range(count):
            buf = _Buffer(acl, name_of(self._desc, i), size_of(self._desc, i), self.shared)
            buffers.append(buf)
            _, ret = acl.mdl.add_dataset_buffer(dataset, buf.data_buffer)
            check(ret, f"acl.mdl.add_dataset_buffer({buf.name})")
        return dataset

    def _bind_thread(self) -> None:
        """ACL contexts are per thread: make ours current when called from another thread."""
        if threading.get_ident() != self._thread:
            check(self.acl.rt.set_context(self._context), "acl.rt.set_context")
            self._thread = threading.get_ident()

    def kv_buffer(self, shape: tuple, dtype: str) -> np.ndarray | None:
        """On shared memory the cache is the device input buffer itself: no per-step KV copy."""
        if not self.shared:
            return None
        buf = self._inputs[self._in_index[3]]
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes > buf.size:
            raise BoardError(f"KV cache of {nbytes} bytes does not fit the model's {buf.size}-byte input")
        return buf.view[:nbytes].view(dtype).reshape(shape)

    def clear_kv(self, kv: np.ndarray) -> None:
        """Zero the device KV input (the cache itself on shared memory) and the host cache."""
        self._bind_thread()
        buf = self._inputs[self._in_index[3]]
        zero(self.acl, buf.ptr, buf.size, buf.name)
        if kv.ctypes.data != buf.ptr:
            kv[...] = 0

    def _write(self, buf: _Buffer, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        if arr.nbytes > buf.size:
            raise BoardError(
                f"{buf.name}: {arr.nbytes} bytes exceed the compiled {buf.size}; is this chunk size a gear?"
            )
        if self.shared:
            if arr.ctypes.data != buf.ptr:  # the KV cache already lives there
                buf.view[: arr.nbytes] = arr.reshape(-1).view(np.uint8)
            return
        ret = self.acl.rt.memcpy(buf.ptr, buf.size, arr.ctypes.data, arr.nbytes, ACL_MEMCPY_HOST_TO_DEVICE)
        check(ret, f"acl.rt.memcpy host->device ({buf.name})")

    def _read(self, position: int, last_row: bool = False) -> np.ndarray:
        """Output `position` of the last execute; with last_row, only the last row along axis 1
        ([1,S,V] logits -> [1,1,V]), so a prefill chunk does not copy S x V logits to the host."""
        index = self._out_index[position]
        dims, ret = self.acl.mdl.get_cur_output_dims(self._desc, index)
        check(ret, "acl.mdl.get_cur_output_dims")
        shape = list(dims["dims"])
        out = np.empty(shape[:1] + [1] + shape[2:] if last_row else shape, dtype=self._out_dtype[position])
        offset = (int(np.prod(shape)) * out.itemsize - out.nbytes) if last_row else 0  # rows before the last
        buf = self._outputs[index]
        if self.shared:
            out.reshape(-1).view(np.uint8)[:] = buf.view[offset : offset + out.nbytes]
        else:
            ret = self.acl.rt.memcpy(out.ctypes.data, out.nbytes, buf.ptr + offset, out.nbytes, ACL_MEMCPY_DEVICE_TO_HOST)
            check(ret, f"acl.rt.memcpy device->host ({buf.name})")
        return out

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, last_only=False):
        # the Ascend graph (graph.logits "all") computes every row; with last_only only the last is copied
        self._bind_thread()
        arrays = (input_ids, attention_mask, position_ids, past_key_values)
        for index, arr in zip(self._in_index, arrays):
            self._write(self._inputs[index], arr)
        if self._dynamic_index is not None:
            # the gear is named by the full shape of every input, in the model's input order
            by_name = dict(zip(INPUT_NAMES, arrays))
            dims = [int(d) for b in self._inputs if b.name in by_name for d in by_name[b.name].shape]
            ret = self.acl.mdl.set_input_dynamic_dims(
                self._model_id, self._in_ds, self._dynamic_index, {"dimCount": len(dims), "name": "", "dims": dims}
            )
            check(ret, f"acl.mdl.set_input_dynamic_dims (chunk of {input_ids.shape[1]} tokens; is it a compiled gear?)")
        check(self.acl.mdl.execute(self._model_id, self._in_ds, self._out_ds), "acl.mdl.execute")
        return self._read(0, last_row=last_only), self._read(1)

    def close(self) -> None:
        """Free buffers and datasets, unload the model, destroy desc/context, reset the device, finalize.

        Every step runs even when an earlier one fails; the first failure is raised at the end.
        """
        if self._closed:
            return
        self._closed = True
        acl, steps = self.acl, []
        if self._context is not None and threading.get_ident() != self._thread:
            steps.append((lambda: acl.rt.set_context(self._context), "acl.rt.set_context"))
        for buf in self._inputs + self._outputs:
            steps += [(lambda b=buf: acl.destroy_data_buffer(b.data_buffer), "acl.destroy_data_buffer"),
                      (lambda b=buf: acl.rt.free(b.ptr), "acl.rt.free")]
        steps += [(lambda d=d: acl.mdl.destroy_dataset(d), "acl.mdl.destroy_dataset") for d in self._datasets]
        if self._model_id is not None:
            steps.append((lambda: acl.mdl.unload(self._model_id), "acl.mdl.unload"))
        if self._desc is not None:
            steps.append((lambda: acl.mdl.destroy_desc(self._desc), "acl.mdl.destroy_desc"))
        if self._context is not None:
            steps.append((lambda: acl.rt.destroy_context(self._context), "acl.rt.destroy_context"))
        steps.append((lambda: acl.rt.reset_device(self.device_id), "acl.rt.reset_device"))
        if self._owns_acl:
            steps.append((acl.finalize, "acl.finalize"))
        first = None
        for call, name in steps:
            try:
                check(call(), name)
            except BoardError as e:
                first = first or e
        if first is not None:
            raise first
