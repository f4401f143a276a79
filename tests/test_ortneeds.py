"""What a graph needs from onnxruntime (board/ortneeds.py, host/ortneeds.py): recorded at build time from the
written ONNX, checked by the board before onnxruntime sees the graph, by `fab doctor`, and by `fab deploy`
before it uploads."""
from __future__ import annotations

import json
import shutil
import sys

import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

import board.backends.ort
from board.__main__ import main
from board.manifest import BundleError, load_manifest
from board.ortneeds import onnxruntime_shortfall, python_for, recommended_options
from host.build import with_onnxruntime_needs
from host.buildconfig import BuildConfig
from host.errors import BuildError, InputError
from host.ortneeds import onnxruntime_needs
from tests.support.bundles import build_test_bundle
from tests.support.sshd import fab, write_inventory

PY = ".".join(map(str, sys.version_info[:3]))
ORT = onnxruntime.__version__
# the tiny Llama (head_dim 16): onnxruntime's GroupQueryAttention cache and fused residual norms
INPLACE = {"ai.onnx opset 17": "1.15.1", "com.microsoft.GroupQueryAttention(position_ids)": "1.22.0",
           "com.microsoft.SkipSimplifiedLayerNormalization": "1.16.2", "ir_version 8": "1.15.1"}
NBITS8 = INPLACE | {"com.microsoft.MatMulNBits(bits=8)": "1.22.0"}
# built for onnxruntime 1.19.2: the slots cache, each rotation one RotaryEmbedding, the linears MatMulInteger
SLOTS_U8U8 = {"MatMulInteger(uint8)": "1.15.1", "ai.onnx opset 17": "1.15.1",
              "com.microsoft.RotaryEmbedding(num_heads)": "1.17.0", "ir_version 8": "1.15.1"}
REFUSED_ON_1_19 = ("the graph needs onnxruntime >= 1.22.0 (for com.microsoft.GroupQueryAttention(position_ids), "
                   f"com.microsoft.MatMulNBits(bits=8)); this board has onnxruntime 1.19.2 on Python {PY}: upgrade "
                   "onnxruntime to 1.22.0 (needs Python >= 3.10), or rebuild with `python -m host build ... --dialect "
                   "u8u8 --onnxruntime 1.19.2`")


@pytest.fixture(scope="module")
def u8u8_bundles(tmp_path_factory) -> dict:
    """The tiny Llama as u8u8, with the newest graph and built for onnxruntime 1.19.2."""
    root = tmp_path_factory.mktemp("u8u8")
    return {"newest": build_test_bundle(root / "newest", quant="w8a8", dialect="u8u8"),
            "1.19.2": build_test_bundle(root / "ort1192", quant="w8a8", onnxruntime="1.19.2")}


def edited_copy(bundle, tmp_path, change):
    """A copy of `bundle` whose manifest.json went through `change` (the manifest is not in its own sha256 list)."""
    out = tmp_path / "copy"
    shutil.copytree(bundle, out)
    data = json.loads((out / "manifest.json").read_text())
    change(data)
    (out / "manifest.json").write_text(json.dumps(data))
    return out


def asks_for_99(data):
    data["graph"]["min_onnxruntime"] = "99.0.0"
    data["graph"]["onnxruntime_ops"]["com.microsoft.FutureAttention"] = "99.0.0"


# --- recorded at build time, from the written ONNX ------------------------------------------
def test_nbits8_bundle_records_onnxruntime_1_22_for_matmulnbits_and_the_inplace_cache(tiny_w8a8_bundle):
    m = load_manifest(tiny_w8a8_bundle)
    assert m.format_version == 8 and m.quantization.dialect == "nbits8" and m.graph.cache == "inplace"
    assert (m.graph.min_onnxruntime, m.graph.onnxruntime_ops) == ("1.22.0", NBITS8)
    assert onnxruntime_needs(tiny_w8a8_bundle / "model.onnx") == NBITS8


def test_u8u8_bundle_needs_1_22_for_its_cache_and_1_17_when_built_for_onnxruntime_1_19(u8u8_bundles):
    newest, old = (load_manifest(u8u8_bundles[k]) for k in ("newest", "1.19.2"))
    assert (newest.quantization.dialect, newest.graph.cache, newest.graph.min_onnxruntime) == ("u8u8", "inplace", "1.22.0")
    assert newest.graph.onnxruntime_ops == INPLACE | {"MatMulInteger(uint8)": "1.15.1"}
    assert (old.quantization.dialect, old.graph.cache, old.graph.min_onnxruntime) == ("u8u8", "slots", "1.17.0")
    assert old.graph.onnxruntime_ops == SLOTS_U8U8


def test_fp32_bundle_records_what_its_graph_needs(tiny_bundle):
    m = load_manifest(tiny_bundle)
    assert (m.graph.min_onnxruntime, m.graph.onnxruntime_ops) == ("1.22.0", INPLACE)


def test_build_config_for_onnxruntime_1_19_picks_u8u8_and_refuses_what_it_cannot_run(tmp_path):
    assert BuildConfig(model="m", out=tmp_path, onnxruntime="1.19.2").dialect == "u8u8"
    assert BuildConfig(model="m", out=tmp_path, onnxruntime="1.22.0").dialect == "nbits8"
    with pytest.raises(InputError) as e:
        BuildConfig(model="m", out=tmp_path, dialect="nbits8", onnxruntime="1.19.2")
    assert str(e.value) == ("--dialect nbits8 needs onnxruntime >= 1.22.0 (com.microsoft.MatMulNBits(bits=8)); "
                            "--onnxruntime 1.19.2 runs --dialect u8u8")
    with pytest.raises(InputError) as e:
        BuildConfig(model="m", out=tmp_path, onnxruntime="1.16.3")
    assert str(e.value) == ("--onnxruntime 1.16.3: every --target ort graph needs onnxruntime >= 1.17.0 "
                            "(com.microsoft.RotaryEmbedding(num_heads)); upgrade the board's onnxruntime")
    with pytest.raises(InputError, match=r"^--onnxruntime 'latest': give the board's onnxruntime release, e.g. 1.19.2$"):
        BuildConfig(model="m", out=tmp_path, onnxruntime="latest")


def test_the_build_fails_when_the_written_graph_needs_more_than_onnxruntime(tiny_w8a8_bundle):
    graph = load_manifest(tiny_w8a8_bundle).graph
    with pytest.raises(BuildError) as e:
        with_onnxruntime_needs(graph, tiny_w8a8_bundle / "model.onnx", "1.21.1")
    assert str(e.value) == ("the graph needs onnxruntime >= 1.22.0 (com.microsoft.GroupQueryAttention(position_ids), "
                            "com.microsoft.MatMulNBits(bits=8)), newer than --onnxruntime 1.21.1")


def test_an_unmeasured_contrib_operator_fails_the_build(tmp_path):
    node = helper.make_node("FancyNorm", ["x"], ["y"], domain="com.microsoft")
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [vi("x", TensorProto.FLOAT, [1])], [vi("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(BuildError) as e:
        onnxruntime_needs(tmp_path / "m.onnx")
    assert str(e.value) == (f"{tmp_path / 'm.onnx'}: no measured onnxruntime release runs com.microsoft.FancyNorm; "
                            "measure the lowest that does and add it to OP_MIN_ORT in board/ortneeds.py")


# --- checked on the board, before onnxruntime sees the graph -----------------------------------
def test_board_verify_refuses_a_graph_newer_than_its_onnxruntime_and_says_what_to_do(tiny_w8a8_bundle, monkeypatch,
                                                                                     capsys):
    monkeypatch.setattr(onnxruntime, "__version__", "1.19.2")  # what the board's check reads
    assert main(["verify", "--bundle", str(tiny_w8a8_bundle)]) == 1
    out, err = capsys.readouterr()
    assert out == f"ok: {tiny_w8a8_bundle} (3 files match their sha256)\n"
    assert err == f"error: {tiny_w8a8_bundle / 'model.onnx'}: {REFUSED_ON_1_19}\n"


def test_board_verify_says_which_onnxruntime_runs_the_graph(u8u8_bundles, monkeypatch, capsys):
    monkeypatch.setattr(onnxruntime, "__version__", "1.19.2")
    assert main(["verify", "--bundle", str(u8u8_bundles["1.19.2"])]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ok: onnxruntime 1.19.2 runs the graph (needs >= 1.17.0)"


def test_generate_refuses_before_an_inference_session_is_made(tiny_w8a8_bundle, monkeypatch, capsys):
    monkeypatch.setattr(onnxruntime, "__version__", "1.19.2")
    monkeypatch.setattr(board.backends.ort.ort, "InferenceSession", lambda *a, **k: pytest.fail("session made"))
    assert main(["generate", "--bundle", str(tiny_w8a8_bundle), "--prompt", "hi", "--backend", "onnxruntime"]) == 2
    assert capsys.readouterr().err == f"error: {tiny_w8a8_bundle / 'model.onnx'}: {REFUSED_ON_1_19}\n"


def test_a_copy_whose_manifest_asks_for_a_newer_onnxruntime_is_refused(tiny_w8a8_bundle, tmp_path, capsys):
    bundle = edited_copy(tiny_w8a8_bundle, tmp_path, asks_for_99)
    assert main(["verify", "--bundle", str(bundle)]) == 1
    assert capsys.readouterr().err == (
        f"error: {bundle / 'model.onnx'}: the graph needs onnxruntime >= 99.0.0 (for com.microsoft.FutureAttention); "
        f"this board has onnxruntime {ORT} on Python {PY}: upgrade onnxruntime to 99.0.0 (needs Python >= 3.11), "
        f"or rebuild with `python -m host build ... --dialect nbits8 --onnxruntime {ORT}`\n")


def test_a_bundle_from_before_format_6_loads_with_its_requirement_unknown(tiny_w8a8_bundle, tmp_path, monkeypatch, capsys):
    def format_5(data):
        data["format_version"] = 5
        del data["graph"]["min_onnxruntime"], data["graph"]["onnxruntime_ops"]

    bundle = edited_copy(tiny_w8a8_bundle, tmp_path, format_5)
    monkeypatch.setattr(onnxruntime, "__version__", "1.0.0")  # nothing to compare with: not checked
    m = load_manifest(bundle)
    assert (m.format_version, m.graph.min_onnxruntime, m.graph.onnxruntime_ops) == (5, None, {})
    assert main(["verify", "--bundle", str(bundle)]) == 0
    assert capsys.readouterr().out == f"ok: {bundle} (3 files match their sha256)\n"
    board.backends.ort.check_onnxruntime(bundle / "model.onnx", m.graph)  # no BundleError


def test_a_malformed_onnxruntime_version_in_the_manifest_is_refused(tiny_w8a8_bundle, tmp_path):
    bundle = edited_copy(tiny_w8a8_bundle, tmp_path, lambda d: d["graph"].update(min_onnxruntime="newest"))
    with pytest.raises(BundleError, match=r"graph.min_onnxruntime and graph.onnxruntime_ops need release versions "
                                          r"such as \"1.22.0\"; rebuild the bundle$"):
        load_manifest(bundle)


@pytest.mark.parametrize("installed, python, expected", [
    ("1.22.0", (3, 10, 12), None),
    ("1.23.2", (3, 10, 12), None),
    ("1.21.1", (3, 10, 12), "the graph needs onnxruntime >= 1.22.0 (for com.microsoft.GroupQueryAttention(position_ids), "
                            "com.microsoft.MatMulNBits(bits=8)); this board has onnxruntime 1.21.1 on Python 3.10.12: "
                            "upgrade onnxruntime to 1.22.0 (needs Python >= 3.10), or rebuild with `python -m host build "
                            "... --dialect u8u8 --onnxruntime 1.21.1`"),
    ("1.16.3", (3, 9, 2), "the graph needs onnxruntime >= 1.22.0 (for com.microsoft.GroupQueryAttention(position_ids), "
                          "com.microsoft.MatMulNBits(bits=8)); this board has onnxruntime 1.16.3 on Python 3.9.2: "
                          "upgrade onnxruntime to 1.22.0 (needs Python >= 3.10)"),  # no graph of ours runs there
    (None, (3, 9, 2), None),  # onnxruntime not importable: nothing to compare
    ("1.20.0.dev20240801", (3, 10, 1), "the graph needs onnxruntime >= 1.22.0 (for com.microsoft.GroupQueryAttention("
                                       "position_ids), com.microsoft.MatMulNBits(bits=8)); this board has onnxruntime "
                                       "1.20.0 on Python 3.10.1: upgrade onnxruntime to 1.22.0 (needs Python >= 3.10), "
                                       "or rebuild with `python -m host build ... --dialect u8u8 --onnxruntime 1.20.0`"),
])
def test_shortfall_names_the_op_the_upgrade_and_the_rebuild(installed, python, expected):
    shortfall = onnxruntime_shortfall("1.22.0", NBITS8, installed, python)
    assert (str(shortfall) if shortfall else None) == expected


def test_an_unquantized_graph_is_rebuilt_without_a_dialect_and_the_python_each_release_needs():
    shortfall = onnxruntime_shortfall("1.22.0", INPLACE, "1.19.2", (3, 9, 18))
    assert shortfall.fix == ("upgrade onnxruntime to 1.22.0 (needs Python >= 3.10), or rebuild with "
                             "`python -m host build ... --onnxruntime 1.19.2`")
    assert [python_for(v) for v in ("1.17.0", "1.19.2", "1.20.0", "1.23.2", "1.24.1", "1.32.0")] == \
        [(3, 8), (3, 8), (3, 10), (3, 10), (3, 11), (3, 11)]
    assert [recommended_options(v) for v in ("1.16.3", "1.19.2", "1.22.0")] == \
        [None, "--dialect u8u8 --onnxruntime 1.19.2", "--dialect nbits8"]


# --- fab doctor and fab deploy, against the real sshd "board" ---------------------------------
@pytest.mark.ssh
def test_doctor_reports_whether_the_boards_onnxruntime_runs_the_bundle(sshd, tmp_path, tiny_w8a8_bundle):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b"))
    r = fab(inventory, "doctor", "--bundle", str(tiny_w8a8_bundle))
    assert f"testboard: ok     graph-ort   onnxruntime {ORT} runs bundle tiny-random-llama (needs >= 1.22.0)" \
        in r.stdout.splitlines(), r.stdout
    r = fab(inventory, "doctor", "--bundle", str(edited_copy(tiny_w8a8_bundle, tmp_path, asks_for_99)))
    assert r.returncode == 1
    assert (f"testboard: fail   graph-ort   bundle tiny-random-llama needs onnxruntime >= 99.0.0 (for "
            f"com.microsoft.FutureAttention), the board has onnxruntime {ORT} on Python {PY} -> fix: upgrade onnxruntime "
            f"to 99.0.0 (needs Python >= 3.11), or rebuild with `python -m host build ... --dialect nbits8 --onnxruntime "
            f"{ORT}`") in r.stdout.splitlines(), r.stdout
    assert "graph-ort" in r.stdout.splitlines()[-1]  # NOT ready (failed: ..., graph-ort)


@pytest.mark.ssh
def test_deploy_refuses_before_uploading_when_the_boards_onnxruntime_is_too_old(sshd, tmp_path, tiny_w8a8_bundle):
    board_dir = tmp_path / "b"
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board_dir))
    r = fab(inventory, "deploy", "--bundle", str(edited_copy(tiny_w8a8_bundle, tmp_path, asks_for_99)))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"testboard: the bundle's graph needs onnxruntime >= 99.0.0 (for com.microsoft.FutureAttention), the board has "
        f"onnxruntime {ORT} on Python {PY}; nothing uploaded, current unchanged; upgrade onnxruntime to 99.0.0 (needs "
        f"Python >= 3.11), or rebuild with `python -m host build ... --dialect nbits8 --onnxruntime {ORT}`"]
    assert not (board_dir / "current").exists()
    assert not any((board_dir / "releases").glob("*")) if (board_dir / "releases").exists() else True
