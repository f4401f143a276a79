"""What `host build` refuses, and how it cleans up: a bad --out before any work, a full disk, sizes past the
model or the machine, too little held-out text, an absurd perplexity, killed builds, Ctrl-C in an import."""
import errno
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from tests.support.bundles import build_test_bundle, make_model, make_tokenizer_bundle, sample_text
from tests.support.paths import ROOT, STORIES_BIN, TINYSTORIES_TEXT, need
from host.__main__ import main, sigint_deferred
from host.build import BuildConfig, build_from_model, check_perplexity
from host.bundle import clean_stale
from host.errors import BuildError, InputError
from host.buildconfig import check_sizes


def host_build(capsys, *args):
    rc = main(["build", "--quant", "none", "--calib", str(need(TINYSTORIES_TEXT)), *map(str, args)])
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("out, words", [
    (lambda tmp: tmp / "file" / "bundle", "file is a file, not a directory"),
    (lambda tmp: Path("/sys/edge-llm-test/bundle"), "Operation not permitted"),
])
def test_a_bad_out_is_refused_before_the_model_is_even_read(tmp_path, capsys, out, words):
    (tmp_path / "file").write_text("a file, not a directory")
    # the model does not exist: the --out error must come first, before any loading or calibration
    rc, err = host_build(capsys, "--model", tmp_path / "missing.bin", "--out", out(tmp_path))
    assert rc == 2 and err.startswith("error: --out ") and words in err and len(err.strip().splitlines()) == 1
    assert "build: load" not in err


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_previous_bundle(tiny_bundle, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    build_test_bundle(out, kv_len=32)
    before = (out / "manifest.json").read_bytes()

    def full(*args, **kwargs):  # the disk fills up while the graph is written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("onnx.save_model", full)
    with pytest.raises(InputError, match=r"--out .*No space left on device.*free space or choose another --out"):
        build_test_bundle(out, kv_len=16)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_stale_staging_dirs_of_killed_builds_go_at_the_next_build(tmp_path):
    out = tmp_path / "b"
    dead = tmp_path / ".b.build-4194305-abcd1234"  # above Linux's pid_max: that process cannot exist
    legacy = tmp_path / ".b.build-k2j3h4g5"  # named before staging dirs carried their pid
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".b.build-{sleeper.pid}-zzzz1111"
        for d in (dead, legacy, live):
            (d / "sub").mkdir(parents=True)
            (d / "sub" / "model.onnx").write_bytes(b"half written")
        killed_swap = tmp_path / ".b.old-qqqq0000"  # killed between moving the old bundle aside and the swap
        killed_swap.mkdir()
        (killed_swap / "manifest.json").write_text("{}")
        assert sorted(clean_stale(out)) == sorted([dead, legacy])
        assert live.is_dir() and (out / "manifest.json").read_text() == "{}"  # the previous bundle is put back
        (tmp_path / ".b.old-rrrr1111").mkdir()  # a leftover beside a complete bundle goes
        assert clean_stale(out) == [tmp_path / ".b.old-rrrr1111"] and not killed_swap.exists()
    finally:
        sleeper.kill()


def test_kv_len_and_calibration_length_are_bounded_by_the_model_and_the_memory(tmp_path):
    model = make_model()  # max_position_embeddings 512
    config = BuildConfig(model="m", out=tmp_path / "b", kv_len=1_000_000_000, prefill_chunks=[1])
    with pytest.raises(InputError, match=r"--kv-len 1000000000: above the model's max_position_embeddings \(512\)"):
        check_sizes(config, model.config)
    with pytest.raises(InputError, match=r"--calib-seq-len 100000: above the model's max_position_embeddings"):
        check_sizes(BuildConfig(model="m", out=tmp_path / "b", calib_seq_len=100_000), model.config)
    model.config.max_position_embeddings = 1 << 30
    with pytest.raises(InputError, match=r"--kv-len: a KV cache of 8.0 GiB \(2 layers x 2 x 2 KV heads x 16777216 x 16 x 4 bytes\) needs about 48.0 GiB during the build but "
                                         r"this machine has 16.0 GiB available; give a smaller --kv-len"):
        check_sizes(BuildConfig(model="m", out=tmp_path / "b", kv_len=1 << 24), model.config, available=16 << 30)
    check_sizes(BuildConfig(model="m", out=tmp_path / "b", kv_len=1 << 16), model.config, available=16 << 30)


def test_build_config_is_frozen_and_checked_once_with_the_fix(tmp_path):
    config = BuildConfig(model="m", out=str(tmp_path), prefill_chunks=[64, 16])
    assert config.prefill_chunks == (1, 16, 64) and config.out == tmp_path and config.dialect == "nbits8"
    assert BuildConfig(model="m", out=str(tmp_path), act_scheme="static").dialect == "u8u8"
    assert BuildConfig(model="m", out=tmp_path, dialect="u8u8").dialect == "u8u8"
    assert BuildConfig(model="m", out=tmp_path, target="ascend").dialect == "s8s8"
    with pytest.raises(InputError, match="--dialect nbits8: --target ascend runs s8s8"):
        BuildConfig(model="m", out=tmp_path, target="ascend", dialect="nbits8")
    with pytest.raises(InputError, match="--dialect nbits8 quantizes activations at run time; use --dialect u8u8"):
        BuildConfig(model="m", out=tmp_path, act_scheme="static", dialect="nbits8")
    with pytest.raises(FrozenInstanceError):
        config.kv_len = 3
    with pytest.raises(InputError, match="--eval-tokens 0: give at least 8"):
        BuildConfig(model="m", out=tmp_path, eval_tokens=0)
    with pytest.raises(InputError, match="--target 'npu': use one of ort, ascend"):
        BuildConfig(model="m", out=tmp_path, target="npu")


def test_an_absurd_perplexity_fails_the_build_and_writes_nothing(tmp_path):
    from host.load import load_model

    # stories260K (vocab 512) with a 400-token tokenizer of other text: every id means something else
    loaded = load_model(str(need(STORIES_BIN)))
    config = BuildConfig(model="m", out=tmp_path / "b", quant="none", kv_len=64, calib_samples=2, calib_seq_len=32,
                         eval_tokens=64, prefill_chunks=[1, 16])
    with pytest.raises(BuildError, match=r"perplexity of the fp32 model .* above 51200 \(100 x vocab_size"):
        build_from_model(loaded.model, make_tokenizer_bundle(400), sample_text(), config, {"name": "m"})
    assert list(tmp_path.iterdir()) == []
    for bad in (math.nan, math.inf):
        with pytest.raises(BuildError, match="perplexity"):
            check_perplexity({"fp32": 3.0, "onnx": bad}, 512)
    check_perplexity({"fp32": 3.7, "onnx": 3.7}, 512)


SIGINT_IN_IMPORT = """
import builtins, os, signal, sys, threading
real = builtins.__import__
def hooked(name, *args, **kwargs):
    if name == "onnxruntime" and "onnxruntime" not in sys.modules:
        builtins.__import__ = real
        # Ctrl-C lands inside the import; unguarded, it mostly surfaces as "ImportError: initialization failed"
        threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGINT)).start()
    return real(name, *args, **kwargs)
builtins.__import__ = hooked
from host.__main__ import main
sys.exit(main(["build", "--model", "missing.bin", "--calib", "missing.txt", "--quant", "none", "--out", sys.argv[1]]))
"""


def test_ctrl_c_during_the_build_imports_is_a_clean_interrupt(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SIGINT_IN_IMPORT, str(tmp_path / "b")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "interrupted; the previous bundle (if any) is untouched\n"
    assert list(tmp_path.iterdir()) == []


def test_sigint_deferred_holds_ctrl_c_until_the_block_ends():
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # an undeferred Ctrl-C would be raised here
            reached = True
    assert reached and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_llama2c_conversion_mismatch_is_an_input_error(tmp_path, monkeypatch):
    from host import llama2c

    real = llama2c.hf_state_dict
    monkeypatch.setattr(llama2c, "hf_state_dict", lambda h, w: {k: v for k, v in real(h, w).items() if "norm" not in k})
    with pytest.raises(InputError, match="conversion mismatch"):
        llama2c.load_llama2c_model(need(STORIES_BIN))
