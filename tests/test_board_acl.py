"""The acl backend through tests/support/fake_acl.py (a test double of pyACL that runs model.onnx underneath):
same tokens as onnxruntime, in both run modes (host with memcpy, 310B shared memory), clean teardown."""
import shutil
import sys

import numpy as np
import pytest

from board.backends import choose_backend, open_backend
from board.backends.acl import AclBackend, read_into
from board.bundle import open_bundle
from board.engine import Engine
from board.errors import BoardError
from board.manifest import BundleError
from board.generate import GenerateConfig, generate
from board.sampling import GREEDY, SamplingConfig
from tests.support.fake_acl import ACL_DEVICE, ACL_HOST, FakeAcl, write_fake_om
from tests.support.prebuilt import fixture_bundle

pytestmark = pytest.mark.cann_double

PROMPT = "Once upon a time there was a little girl named lily"


@pytest.fixture(scope="module")
def om_bundle(tmp_path_factory):
    """The tiny model built for the NPU (the docs/design.md §3 graph, fp16 compute), with a stand-in .om."""
    return open_bundle(with_fake_om("tiny-ascend", tmp_path_factory))


def with_fake_om(name, tmp_path_factory):
    """A copy of fixture bundle `name` with a stand-in model.om beside its graph."""
    path = shutil.copytree(fixture_bundle(name, tmp_path_factory), tmp_path_factory.mktemp("acl") / name)
    write_fake_om(path)
    return path


def run(bundle, backend, steps, sampling=GREEDY, seed=0, repeat=1):
    engine = Engine(backend, bundle.manifest.arch, bundle.manifest.graph)
    ids = bundle.tokenizer.encode(" ".join([PROMPT] * repeat), bos=True)
    return generate(engine, bundle.tokenizer, ids, GenerateConfig(steps, sampling), np.random.default_rng(seed)), engine


@pytest.mark.parametrize("mode", [ACL_HOST, ACL_DEVICE])
def test_acl_backend_generates_the_same_tokens_as_onnxruntime(om_bundle, monkeypatch, mode):
    fake = FakeAcl(run_mode=mode)
    monkeypatch.setitem(sys.modules, "acl", fake)
    assert choose_backend(om_bundle, "auto") == "acl"
    kv_len = om_bundle.manifest.graph.kv_len
    sampling = SamplingConfig(temperature=0.9, top_k=20, top_p=0.95)
    with open_backend(om_bundle, "onnxruntime", threads=1) as ort_backend:
        expected, _ = run(om_bundle, ort_backend, 40, sampling)
        # a prompt longer than the window: prefill in 16/8/1 chunks through eviction
        greedy_expected, _ = run(om_bundle, ort_backend, 20, repeat=6)
    with open_backend(om_bundle, "auto") as backend:
        assert isinstance(backend, AclBackend) and backend.shared == (mode == ACL_DEVICE)
        got, engine = run(om_bundle, backend, 40, sampling)
        greedy_got, engine = run(om_bundle, backend, 20, repeat=6)
        assert engine.cache.next_pos > 2 * kv_len
        if mode == ACL_DEVICE:  # the cache is the device's input buffer: no KV copy per step
            kv_ptr = backend._inputs[backend._in_index[3]].ptr
            assert engine.cache.kv.ctypes.data == kv_ptr
    assert got.tokens == expected.tokens and len(got.tokens) > 5
    assert greedy_got.tokens == greedy_expected.tokens and len(greedy_got.tokens) > 5
    assert fake.leaks() == []
    copies = fake.calls.count("rt.memcpy")
    assert (copies > 0) if mode == ACL_HOST else (copies == 0)
    assert fake.calls.count("mdl.set_input_dynamic_dims") == fake.calls.count("mdl.execute") >= len(got.tokens) + len(greedy_got.tokens)
    # teardown ran in order: buffers, model, context, device, finalize
    tail = [c for c in fake.calls if c in ("mdl.unload", "rt.destroy_context", "rt.reset_device", "finalize")]
    assert tail == ["mdl.unload", "rt.destroy_context", "rt.reset_device", "finalize"]


def test_a_chunk_that_is_no_compiled_gear_is_a_clear_error(om_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "acl", FakeAcl())
    with open_backend(om_bundle, "acl") as backend:
        a, g = om_bundle.manifest.arch, om_bundle.manifest.graph
        past = np.zeros((a.num_layers, 2, 1, a.num_kv_heads, g.kv_len, a.head_dim), dtype=g.kv_dtype)
        s = 3  # not in prefill_chunks [1, 8, 16]
        with pytest.raises(BoardError, match="set_input_dynamic_dims.*3 tokens.*gear"):
            backend.forward(np.ones((1, s), np.int64), np.ones((1, g.kv_len + s), np.int64),
                            np.arange(s, dtype=np.int64)[None], past)


def test_auto_falls_back_to_onnxruntime_without_pyacl(om_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "acl", None)  # `import acl` raises ImportError
    assert choose_backend(om_bundle, "auto") == "onnxruntime"
    with pytest.raises(BoardError, match="set_env.sh"):
        choose_backend(om_bundle, "acl")


@pytest.mark.parametrize("error, fix", [
    ("numpy.core.multiarray failed to import",
     "pyACL is built against numpy 1: install numpy<2 in the board's python (`fab setup` installs "
     "board/requirements-acl.txt on boards with backend acl)"),
    ("libascendcl.so: cannot open shared object file: No such file or directory",
     "CANN's libraries are not on the library path: source set_env.sh first (`fab setup` writes env.sh for it)"),
])
def test_a_pyacl_that_fails_to_import_is_named_with_its_error(om_bundle, monkeypatch, tmp_path, capsys, error, fix):
    """An `acl` module that exists but raises (as a numpy-1 pyACL does under numpy 2) is shown, not swallowed."""
    (tmp_path / "acl.py").write_text(f"raise ImportError({error!r})\n")
    monkeypatch.delitem(sys.modules, "acl", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = f"pyACL (python module `acl`) is installed but does not import (ImportError: {error}): {fix}"
    assert choose_backend(om_bundle, "auto") == "onnxruntime"
    assert capsys.readouterr().err == f"--backend auto: {problem}; running on onnxruntime (CPU) instead\n"
    with pytest.raises(BoardError) as e:
        choose_backend(om_bundle, "acl")
    assert str(e.value) == problem


def test_an_om_that_does_not_load_names_the_file_and_cleans_up(om_bundle, monkeypatch):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    bad = om_bundle.path.parent / "not-an-om"
    bad.write_text("this is not a compiled model")
    with pytest.raises(BundleError, match="not-an-om: acl.mdl.load_from_mem failed with ACL error 100012;.*python -m host compile"):
        AclBackend(bad, om_bundle.manifest.graph)
    assert fake.leaks() == []  # load buffer freed, context destroyed, device reset, ACL finalized after the failure


@pytest.mark.parametrize("mode, alloc, free", [(ACL_DEVICE, "rt.malloc", "rt.free"),
                                               (ACL_HOST, "rt.malloc_host", "rt.free_host")])
def test_the_om_is_loaded_from_memory_of_the_run_modes_kind_and_freed_at_once(om_bundle, monkeypatch, mode, alloc, free):
    """pyACL: in RC mode (the board's own CPU) load_from_mem wants device memory, on a host host memory."""
    fake = FakeAcl(run_mode=mode)
    monkeypatch.setitem(sys.modules, "acl", fake)
    with open_backend(om_bundle, "acl"):
        load = fake.calls.index("mdl.load_from_mem")
        assert "mdl.load_from_file" not in fake.calls
        assert fake.calls[load - 1] == alloc and fake.calls[load + 1] == free  # the buffer lives for the load only
        assert not fake.host_memory  # nothing left of the temporary copy
    assert fake.leaks() == []
    other = FakeAcl(run_mode=ACL_DEVICE)  # and the double refuses host memory where ACL wants device memory
    ptr, _ = other.rt.malloc_host(16)
    assert other.mdl.load_from_mem(ptr, 16) == (0, 100000)


def test_the_om_is_read_in_chunks_and_a_short_file_is_named(tmp_path):
    data = np.arange(100, dtype=np.uint8)
    (tmp_path / "m.om").write_bytes(data.tobytes())
    view = np.zeros(100, np.uint8)
    read_into(tmp_path / "m.om", view, chunk=7)
    np.testing.assert_array_equal(view, data)
    with pytest.raises(BoardError, match=r"m.om: ended after 100 of 120 bytes while loading"):
        read_into(tmp_path / "m.om", np.zeros(120, np.uint8), chunk=7)


def test_a_prefill_wanting_the_last_row_copies_only_that_rows_logits(om_bundle, monkeypatch):
    fake = FakeAcl(run_mode=ACL_HOST)
    monkeypatch.setitem(sys.modules, "acl", fake)
    with open_backend(om_bundle, "acl") as backend:
        engine = Engine(backend, om_bundle.manifest.arch, om_bundle.manifest.graph)
        ids = om_bundle.tokenizer.encode(" ".join([PROMPT] * 4), bos=True)
        assert len(ids) >= 16 and 16 in om_bundle.manifest.graph.prefill_chunks
        fake.d2h.clear()
        last = engine.feed(ids)
        row = om_bundle.manifest.arch.vocab_size * np.dtype(backend._out_dtype[0]).itemsize
        logits_copies = fake.d2h[::2]  # each execute copies logits, then present
        assert logits_copies and set(logits_copies) == {row}, (logits_copies, row)
        with open_backend(om_bundle, "onnxruntime", threads=1) as ort_backend:
            want = Engine(ort_backend, om_bundle.manifest.arch, om_bundle.manifest.graph).feed(ids)
        np.testing.assert_allclose(last, want, rtol=1e-3, atol=1e-3)


def test_fp16_kv_cache_in_shared_device_memory(tmp_path_factory, monkeypatch):
    bundle = open_bundle(with_fake_om("tiny-fp16", tmp_path_factory))
    assert bundle.manifest.graph.kv_dtype == "float16"
    with open_backend(bundle, "onnxruntime", threads=1) as ort_backend:
        expected, _ = run(bundle, ort_backend, 20, repeat=4)
    monkeypatch.setitem(sys.modules, "acl", FakeAcl(run_mode=ACL_DEVICE))
    with open_backend(bundle, "acl") as backend:
        got, engine = run(bundle, backend, 20, repeat=4)
        assert engine.cache.kv.dtype == np.float16
        assert engine.cache.kv.ctypes.data == backend._inputs[backend._in_index[3]].ptr
    assert got.tokens == expected.tokens and len(got.tokens) > 5


def test_the_onnxruntime_inplace_cache_graph_is_refused_before_acl_is_touched(tiny_bundle, monkeypatch):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    graph = open_bundle(tiny_bundle).manifest.graph
    if graph.cache != "inplace":  # an onnxruntime build of a model whose head_dim suits GroupQueryAttention
        pytest.skip("this fixture was built for onnxruntime < 1.22, which has no in-place cache graph")
    with pytest.raises(BundleError, match="rebuild with --target ascend"):
        AclBackend(tiny_bundle / "model.om", graph)
    assert fake.calls == []


def test_device_memory_is_zeroed_after_malloc_and_after_reset(om_bundle, monkeypatch):
    fake = FakeAcl(run_mode=ACL_DEVICE)  # its malloc returns 0xFF bytes: NaN as fp32
    monkeypatch.setitem(sys.modules, "acl", fake)
    with open_backend(om_bundle, "acl") as backend:
        buffers = fake.calls[fake.calls.index("mdl.load_from_mem"):]  # the load's own buffer is filled from the file
        assert buffers.count("rt.memset") == buffers.count("rt.malloc") > 0
        _, engine = run(om_bundle, backend, 8)
        assert engine.cache.used > 0 and np.abs(engine.cache.kv).max() > 0
        engine.cache.kv[...] = np.nan  # what a previous conversation could leave behind, at worst
        engine.reset()
        assert not np.any(engine.cache.kv)  # the device buffer itself: the cache lives there
        assert fake.calls[-1] == "rt.memset"


def test_teardown_runs_every_step_and_raises_the_first_failure(om_bundle, monkeypatch):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    backend = open_backend(om_bundle, "acl")
    first_buffer = backend._inputs[0].ptr
    free = fake.rt.free
    fake.rt.free = lambda ptr: 507899 if ptr == first_buffer else free(ptr)
    with pytest.raises(BoardError, match="acl.rt.free failed with ACL error 507899"):
        backend.close()
    assert fake.leaks() == ["1 device buffers"]  # everything else was still released
    assert fake.calls[-2:] == ["rt.reset_device", "finalize"]


def test_acl_initialised_by_someone_else_is_not_finalized(om_bundle, monkeypatch):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    assert fake.init() == 0  # another component of the process owns ACL
    with open_backend(om_bundle, "acl"):
        pass
    assert "finalize" not in fake.calls and fake.initialized


def test_a_backend_used_from_another_thread_sets_its_context(om_bundle, monkeypatch):
    import threading

    monkeypatch.setitem(sys.modules, "acl", FakeAcl())
    with open_backend(om_bundle, "acl") as backend:
        results = {}
        worker = threading.Thread(target=lambda: results.update(got=run(om_bundle, backend, 6)[0].tokens))
        worker.start()
        worker.join()
        assert len(results["got"]) == 6
    with open_backend(om_bundle, "onnxruntime", threads=1) as ort_backend:
        assert run(om_bundle, ort_backend, 6)[0].tokens == results["got"]
