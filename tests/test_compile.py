"""host/ascend/: the ATC command, runner selection, and the bundle update.

ATC itself is not on these machines: the runner tests use tests/fake_bin/atc, a stand-in
executable that validates its arguments like ATC and writes an .om holding them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from board.manifest import TensorSpec, file_entries, load_manifest, write_manifest
from board.ascend import find_plugin
from host.__main__ import main
from host.ascend.atc import (
    CompileError, ToolMissing, derive_atc_command, derive_input_shapes, host_env_args, produced_om, resolve_soc,
)
from host.ascend.board_runner import BoardRunner
from host.ascend.compile import CompileConfig, compile_bundle
from host.ascend.runners import DockerRunner, LocalRunner, select_runner
from host.errors import InputError
from tests.support.bundles import build_test_bundle
from tests.support.compile_bundles import FAKE_BIN, fake_toolkit, install_fake_plugin, make_bundle, make_manifest, snapshot


# --- command derivation --------------------------------------------------------------------
def test_tinyllama_command_has_fixed_kv_and_one_gear_per_prefill_chunk():
    m = make_manifest(layers=22, kv_heads=4, head_dim=64, kv_len=1024, chunks=[1, 16, 64])
    cmd = derive_atc_command(m, "Ascend310B1", model="/b/model.onnx", output="/w/model")
    assert cmd.argv == [
        "atc",
        "--model=/b/model.onnx",
        "--framework=5",
        "--output=/w/model",
        "--input_format=ND",
        "--input_shape=input_ids:1,-1;attention_mask:1,-1;position_ids:1,-1;past_key_values:44,4,1024,64",
        "--dynamic_dims=1,1025,1;16,1040,16;64,1088,64",
        "--soc_version=Ascend310B1",
        "--precision_mode_v2=origin",
        "--op_select_implmode=high_precision",
        "--log=error",
    ]
    assert cmd.gears == [1, 16, 64]
    fast = derive_atc_command(m, "Ascend310B1", "/b/model.onnx", "/w/model", impl_mode="high_performance")
    assert "--op_select_implmode=high_performance" in fast.argv and fast.impl_mode == "high_performance"
    bare = derive_atc_command(m, "Ascend310B1", "/b/model.onnx", "/w/model", impl_mode="none")
    assert not any(a.startswith("--op_select_implmode") for a in bare.argv)
    assert "'--input_shape=input_ids:1,-1;" in cmd.shell()  # the semicolons are quoted for a shell


def test_stories_shape_with_symbolic_kv_dims_and_unsorted_chunks():
    m = make_manifest(layers=5, kv_heads=4, head_dim=8, kv_len=256, chunks=[32, 1, 8])
    m.graph.inputs[3] = TensorSpec("past_key_values", "float32", ["L", "Hkv", "KV", "D"])
    shape, dims, gears = derive_input_shapes(m)
    assert shape == "input_ids:1,-1;attention_mask:1,-1;position_ids:1,-1;past_key_values:5,4,256,8"
    assert dims == "1,257,1;8,264,8;32,288,32" and gears == [1, 8, 32]


def test_decode_only_graph_compiles_with_static_shapes():
    m = make_manifest(layers=5, kv_heads=4, head_dim=8, kv_len=256, chunks=[1])
    cmd = derive_atc_command(m, "8T", model="m.onnx", output="out")
    assert "--input_shape=input_ids:1,1;attention_mask:1,257;position_ids:1,1;past_key_values:10,4,256,8" in cmd.argv
    assert not any(a.startswith("--dynamic_dims") for a in cmd.argv)
    assert "--soc_version=Ascend310B4" in cmd.argv


def test_board_models_map_to_socs_and_unknown_socs_say_which_is_which():
    assert resolve_soc("20T") == "Ascend310B1" and resolve_soc("8T") == "Ascend310B4"
    assert resolve_soc("ascend310b4") == "Ascend310B4"
    with pytest.raises(InputError, match="20T boards are Ascend310B1, 8T boards are Ascend310B4"):
        resolve_soc("Ascend310P3")


def test_unknown_precision_mode_and_shape_symbol_are_input_errors():
    m = make_manifest(5, 4, 8, 64, [1, 4])
    with pytest.raises(InputError, match="precision-mode"):
        derive_atc_command(m, "Ascend310B1", "m.onnx", "o", precision_mode="force_fp32")
    with pytest.raises(InputError, match="impl-mode.*high_precision, high_performance, none"):
        derive_atc_command(m, "Ascend310B1", "m.onnx", "o", impl_mode="fast")
    m.graph.inputs[1] = TensorSpec("attention_mask", "int64", [1, "KV+T"])
    with pytest.raises(InputError, match="unknown symbol 'T'"):
        derive_input_shapes(m)


# --- CLI: dry run and check-only -------------------------------------------------------------
def test_dry_run_json_prints_the_command_and_op_check(tmp_path, capsys):
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    rc = main(["compile", "--bundle", str(bundle), "--soc", "20T", "--dry-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and snapshot(bundle) == before
    assert out["argv"][1] == f"--model={bundle.resolve() / 'model.onnx'}"
    assert out["dynamic_dims"] == "1,65,1;16,80,16" and out["soc"] == "Ascend310B1" and out["board_model"] == "20T"
    assert out["opcheck"]["needs_plugin"] == ["MatMulInteger"]


def test_dry_run_takes_int8_op_and_impl_mode(tmp_path, capsys):
    bundle = make_bundle(tmp_path, opset=11)
    assert main(["compile", "--bundle", str(bundle), "--soc", "20T", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["int8"]["int8_op"] == "AscendQuant" and "--op_select_implmode=high_precision" in out["argv"]
    assert main(["compile", "--bundle", str(bundle), "--soc", "20T", "--dry-run", "--json", "--int8-op", "Cast",
                 "--impl-mode", "none"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["int8"] == {"int8_op": "Cast", "replaced": 0, "kept": 1, "note": ""} and out["impl_mode"] == "none"
    assert not any(a.startswith("--op_select_implmode") for a in out["argv"])


def test_check_only_exits_1_on_the_u8u8_dialect(tmp_path, capsys):
    bundle = make_bundle(tmp_path, dialect="u8u8")
    rc = main(["compile", "--bundle", str(bundle), "--soc", "Ascend310B4", "--check-only"])
    out = capsys.readouterr().out
    assert rc == 1 and "unsupported ai.onnx::MatMulInteger x1: node lm_head_q" in " ".join(out.split())
    assert out.splitlines()[-1] == "check: fail: ATC would reject 1 of 9 op types (1 node)"


def test_check_only_passes_the_ascend_dialect_with_a_one_line_verdict(tmp_path, capsys):
    rc = main(["compile", "--bundle", str(make_bundle(tmp_path)), "--soc", "Ascend310B4", "--check-only"])
    out = capsys.readouterr().out
    assert rc == 0 and out.splitlines()[-1] == \
        "check: pass: ATC parses all 9 op types (10 nodes); MatMulInteger through the edge_llm plugin"


def test_check_only_of_an_onnxruntime_bundle_names_the_build_for_the_npu(tiny_w8a8_bundle, capsys):
    rc = main(["compile", "--bundle", str(tiny_w8a8_bundle), "--soc", "20T", "--check-only"])
    *_, verdict, hint = capsys.readouterr().out.splitlines()
    assert rc == 1 and verdict.startswith("check: fail: ATC would reject 3 of ")
    # the options come from the bundle's report.json: the same model, quantization and KV length
    assert hint == ("this bundle is built for onnxruntime (--target ort); rebuild it for the NPU: python -m host build "
                    f"--model tiny-random-llama --quant w8a8 --kv-len 64 --target ascend --out {tiny_w8a8_bundle}")
    assert main(["compile", "--bundle", str(tiny_w8a8_bundle), "--soc", "20T", "--check-only", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["rebuild"] == hint.split(": ", 1)[1]


# --- the local runner through the stand-in atc ---------------------------------------------
def test_local_runner_puts_model_om_in_the_bundle_with_verified_checksums(tmp_path, fake_atc_env, capsys):
    bundle = make_bundle(tmp_path)
    rc = main(["compile", "--bundle", str(bundle), "--soc", "Ascend310B1", "--runner", "local", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["runner"] == "local"
    m = load_manifest(bundle)  # verifies every file's size and sha256
    assert m.graph.om == "model.om" and set(m.files) == {"model.onnx", "tokenizer.json", "model.om"}
    assert m.graph.om_soc == "Ascend310B1" and m.graph.om_cann == "8.0.RC1" == result["cann"]
    om = (bundle / "model.om").read_bytes()
    assert om.startswith(b"FAKE-OM") and b"--dynamic_dims=1,65,1;16,80,16" in om
    assert m.files["model.om"].sha256 == hashlib.sha256(om).hexdigest() == result["sha256"]
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_recompiling_replaces_the_om_and_its_checksum(tmp_path, fake_atc_env):
    bundle = make_bundle(tmp_path)
    first = compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"))
    second = compile_bundle(CompileConfig(bundle, "Ascend310B4", runner="local", precision_mode="fp16"))
    assert first["sha256"] != second["sha256"]
    assert load_manifest(bundle).files["model.om"].sha256 == second["sha256"]
    assert b"--soc_version=Ascend310B4" in (bundle / "model.om").read_bytes()


def test_a_plugin_whose_vendor_is_not_enabled_is_named_before_atc_runs(tmp_path, fake_atc_env, capsys):
    bundle = make_bundle(tmp_path)
    (fake_atc_env / "vendors" / "config.ini").write_text("load_priority=customize\n")
    rc = main(["compile", "--bundle", str(bundle), "--soc", "Ascend310B1", "--runner", "local"])
    err = capsys.readouterr().err
    assert rc == 2 and "vendor 'edge_llm' is not in" in err and "load_priority, so ATC ignores it" in err


def test_missing_plugin_is_caught_before_atc_runs(tmp_path, fake_atc_env, monkeypatch, capsys):
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    monkeypatch.setenv("ASCEND_OPP_PATH", str(tmp_path / "empty_opp"))
    rc = main(["compile", "--bundle", str(bundle), "--soc", "Ascend310B1", "--runner", "local"])
    err = capsys.readouterr().err
    assert rc == 2 and "E19010" in err and "docker/plugin/build.sh" in err
    assert snapshot(bundle) == before


def test_plugin_is_found_through_ascend_custom_opp_path(tmp_path):
    lib = install_fake_plugin(tmp_path / "custom")
    install_fake_plugin(tmp_path / "other", marker=b"SomethingElse")
    env = {"ASCEND_CUSTOM_OPP_PATH": f"{tmp_path / 'other' / 'vendors' / 'edge_llm'}:{lib.parents[2]}"}
    assert find_plugin(env).lib == str(lib)
    assert find_plugin({"ASCEND_CUSTOM_OPP_PATH": str(tmp_path / "other" / "vendors" / "edge_llm")}).lib is None


@pytest.mark.parametrize("output, hint", [
    ("E19010: No parser is registered for Op [x]", "install docker/plugin"),
    ("Killed", "MAX_COMPILE_CORE_NUMBER=1 TE_PARALLEL_COMPILER=1"),
    ("E10001: Value [Ascend310B1] for parameter [--soc_version] is invalid", "Ascend310B1 is for 20T boards"),
    ("E10001: The CPU aarch64 is not within the support list of {x86_64}, parameter [--host_env_cpu]",
     "compile on the board (--runner board)"),
])
def test_atc_failures_are_explained_and_leave_the_bundle_untouched(tmp_path, fake_atc_env, monkeypatch, output, hint):
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    monkeypatch.setenv("FAKE_ATC_FAIL", output)
    with pytest.raises(CompileError) as e:
        compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"))
    assert hint in str(e.value).splitlines()[0] and output in str(e.value)
    assert snapshot(bundle) == before


def test_manifest_inputs_that_disagree_with_the_graph_fail_before_atc(tmp_path, fake_atc_env):
    bundle = make_bundle(tmp_path)
    m = load_manifest(bundle)
    m.graph.inputs[0] = TensorSpec("tokens", "int64", [1, "S"])
    write_manifest(bundle, m)
    with pytest.raises(InputError, match="do not match the manifest"):
        compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"))


def test_a_rank_6_cache_from_before_format_7_is_refused_before_atc(tmp_path, fake_atc_env):
    bundle = make_bundle(tmp_path)
    m = load_manifest(bundle)
    model = onnx.load(str(bundle / "model.onnx"))
    for value in (model.graph.input[3], model.graph.output[1]):  # the old [L,2,1,Hkv,KV,D] layout
        value.CopyFrom(onnx.helper.make_tensor_value_info(value.name, onnx.TensorProto.FLOAT, [5, 2, 1, 4, 64, 8]))
    onnx.save(model, str(bundle / "model.onnx"))
    m.graph.inputs[3] = TensorSpec("past_key_values", "float32", [5, 2, 1, 4, 64, 8])
    write_manifest(bundle, replace(m, files=file_entries(bundle, ["model.onnx", "tokenizer.json"])))
    with pytest.raises(InputError) as e:
        compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"))
    assert str(e.value) == (f"{bundle / 'model.onnx'}: inputs {{'past_key_values': 6}} have rank > 4, which ATC refuses "
                            "with --dynamic_dims (bundle format < 7); rebuild the bundle with this host")


def test_the_stand_in_atc_refuses_a_rank_6_input_with_dynamic_dims_as_atc_documents(tmp_path, fake_atc_env):
    bundle = make_bundle(tmp_path)
    model = onnx.load(str(bundle / "model.onnx"))
    model.graph.input[3].CopyFrom(onnx.helper.make_tensor_value_info("past_key_values", onnx.TensorProto.FLOAT,
                                                                     [5, 2, 1, 4, 64, 8]))
    onnx.save(model, str(tmp_path / "rank6.onnx"))
    m = load_manifest(bundle)
    m.graph.inputs[3] = TensorSpec("past_key_values", "float32", [5, 2, 1, 4, 64, 8])
    cmd = derive_atc_command(m, "Ascend310B1", str(tmp_path / "rank6.onnx"), str(tmp_path / "out"))
    r = subprocess.run([str(FAKE_BIN / "atc"), *cmd.argv[1:]], capture_output=True, text=True)
    assert r.returncode != 0 and ("E10001: inputs ['past_key_values'] have more than 4 dims; --dynamic_dims "
                                  "supports ND inputs of rank <= 4") in r.stdout + r.stderr


def test_the_stand_in_atc_takes_the_implmode_values_atc_lists(tmp_path, fake_atc_env):
    bundle = make_bundle(tmp_path)
    cmd = derive_atc_command(load_manifest(bundle), "Ascend310B1", str(bundle / "model.onnx"), str(tmp_path / "out"))
    ok = subprocess.run([str(FAKE_BIN / "atc"), *cmd.argv[1:]], capture_output=True, text=True)
    assert ok.returncode == 0 and "--op_select_implmode=high_precision" in (tmp_path / "out.om").read_text()
    argv = [a.replace("high_precision", "high_performance ") for a in cmd.argv[1:]]  # the forum's stray space
    bad = subprocess.run([str(FAKE_BIN / "atc"), *argv], capture_output=True, text=True)
    assert bad.returncode == 1 and "Value [high_performance ] for parameter [--op_select_implmode] is invalid" in bad.stderr


def test_unsupported_ops_stop_the_compile(tmp_path, fake_atc_env):
    bundle = make_bundle(tmp_path, dialect="u8u8")
    before = snapshot(bundle)
    with pytest.raises(CompileError, match="ATC would reject this graph"):
        compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"))
    assert snapshot(bundle) == before


# --- runner selection with nothing installed -----------------------------------------------
def test_auto_with_no_atc_and_no_docker_daemon_says_what_to_install(tmp_path, monkeypatch, capsys):
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    rc = main(["compile", "--bundle", str(bundle), "--soc", "Ascend310B1"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "atc is not on PATH" in err and "no Docker daemon reachable" in err and "--runner board" in err
    assert snapshot(bundle) == before


def test_explicit_local_runner_without_atc_is_one_line(tmp_path, monkeypatch, capsys):
    bundle = make_bundle(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    rc = main(["compile", "--bundle", str(bundle), "--soc", "Ascend310B1", "--runner", "local"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: atc is not on PATH") and len(err.strip().splitlines()) == 1


def test_board_runner_needs_a_board_name(tmp_path, capsys):
    bundle = make_bundle(tmp_path)
    assert main(["compile", "--bundle", str(bundle), "--soc", "8T", "--runner", "board"]) == 2
    assert "--board NAME" in capsys.readouterr().err


# --- Docker runner: real SDK against no daemon; a stand-in client for the container call ----
def test_docker_runner_with_no_daemon_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(ToolMissing, match="no Docker daemon reachable.*start Docker"):
        select_runner(CompileConfig(tmp_path, "Ascend310B1", runner="docker"))


class StandInDockerClient:
    """Test stand-in for docker.DockerClient: records the container calls, plays ATC in /out, and runs
    a `python3 -c` command here with the image's toolkit at `toolkit_home`."""

    def __init__(self, images=("edge-llm/cann:8.0.0-310b",), exit_code=0, toolkit_home=None):
        self.calls, self.exit_code, self.present = [], exit_code, set(images)
        self.images, self.containers = self, self
        self.toolkit_home, self.output = toolkit_home, b""

    def ping(self):
        return True

    def get(self, tag):  # images.get
        if tag not in self.present:
            raise LookupError(tag)

    def run(self, image, command, volumes, **kw):  # containers.run
        self.calls.append({"image": image, "command": command, "volumes": volumes, **kw})
        if command[0] == "python3":
            env = {"PATH": "/usr/bin:/bin", "ASCEND_TOOLKIT_HOME": str(self.toolkit_home)}
            self.output = subprocess.run([sys.executable, *command[1:]], capture_output=True, env=env).stdout
            return self
        out = next(h for h, v in volumes.items() if v["bind"] == "/out")
        if self.exit_code == 0:
            Path(out, "model.om").write_bytes(b"OM from " + " ".join(command).encode())
        self.output = b"E19010: No parser is registered" if self.exit_code else b"ATC run success"
        return self

    def wait(self):
        return {"StatusCode": self.exit_code}

    def logs(self):
        return self.output

    def remove(self, force=False):
        self.removed = True


@pytest.mark.cann_double
def test_docker_runner_mounts_the_bundle_and_installs_the_om(tmp_path):
    bundle = make_bundle(tmp_path)
    client = StandInDockerClient(toolkit_home=fake_toolkit(tmp_path, "8.0.0"))
    runner = DockerRunner.connect("edge-llm/cann:8.0.0-310b", client_factory=lambda: client)
    result = compile_bundle(CompileConfig(bundle, "Ascend310B4", runner="docker"), runner=runner)
    call, probe = client.calls
    assert probe["command"][:2] == ["python3", "-c"] and result["cann"] == "8.0.0"
    assert load_manifest(bundle).graph.om_cann == "8.0.0"  # the toolkit inside the image
    assert call["command"][:2] == ["atc", "--model=/bundle/model.onnx"] and "--output=/out/model" in call["command"]
    assert call["volumes"][str(bundle.resolve())] == {"bind": "/bundle", "mode": "ro"}
    assert client.removed and result["runner"] == "docker"
    assert load_manifest(bundle).files["model.om"].size == len((bundle / "model.om").read_bytes())


@pytest.mark.cann_double
def test_docker_runner_mounts_the_ascend_quant_copy_not_the_bundle(tmp_path):
    bundle = make_bundle(tmp_path, opset=11)  # the --target ascend opset: AscendQuant replaces the Cast to int8
    client = StandInDockerClient(toolkit_home=fake_toolkit(tmp_path, "8.0.0"))
    runner = DockerRunner.connect("edge-llm/cann:8.0.0-310b", client_factory=lambda: client)
    mounted = {}
    run = client.containers.run

    def run_and_look(image, command, volumes, **kw):  # the scratch copy is gone once compile_bundle returns
        for host_dir, bind in volumes.items():
            if bind["bind"] == "/bundle":
                mounted["ops"] = [n.op_type for n in onnx.load(str(Path(host_dir) / "model.onnx")).graph.node]
                mounted["dir"] = host_dir
        return run(image, command, volumes, **kw)

    client.containers.run = run_and_look
    result = compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="docker"), runner=runner)
    assert result["int8"] == {"int8_op": "AscendQuant", "replaced": 1, "kept": 0, "note": ""}
    assert mounted["dir"] != str(bundle.resolve()) and "AscendQuant" in mounted["ops"]
    assert result["opcheck"]["model"] == f"{bundle / 'model.onnx'} (ATC's copy, with AscendQuant)"
    assert "AscendQuant" not in [n.op_type for n in onnx.load(str(bundle / "model.onnx")).graph.node]


@pytest.mark.cann_double
def test_docker_runner_reports_a_missing_image_and_a_failed_atc(tmp_path):
    with pytest.raises(ToolMissing, match="make docker-build"):
        DockerRunner.connect("other:tag", client_factory=lambda: StandInDockerClient())
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    runner = DockerRunner.connect("edge-llm/cann:8.0.0-310b", client_factory=lambda: StandInDockerClient(exit_code=1))
    with pytest.raises(CompileError, match="E19010"):
        compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="docker"), runner=runner)
    assert snapshot(bundle) == before


# --- board runner: a stand-in shell that runs the "remote" commands on this machine ---------
class LocalStandInShell:
    """Test stand-in for a board connection: runs argv here (PATH has the stand-in atc), copies locally."""

    def __init__(self, scratch_dir: Path):
        self.commands, self.scratch_dir = [], scratch_dir

    def run(self, argv, cwd=None):
        self.commands.append(list(argv))
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        return p.returncode, p.stdout + p.stderr

    def put(self, local, remote):
        shutil.copyfile(local, remote)

    def get(self, remote, local):
        shutil.copyfile(remote, local)

    def scratch(self):
        return str(self.scratch_dir)


def test_board_runner_compiles_with_one_core_and_cleans_up(tmp_path, fake_atc_env):
    bundle = make_bundle(tmp_path)
    shell = LocalStandInShell(tmp_path / "remote")
    runner = BoardRunner(open_shell=lambda: contextlib.nullcontext(shell), board="orangepi")
    result = compile_bundle(CompileConfig(bundle, "20T", runner="board", board="orangepi"), runner=runner)
    atc_argv = next(c for c in shell.commands if "atc" in c)
    assert atc_argv[:4] == ["env", "MAX_COMPILE_CORE_NUMBER=1", "TE_PARALLEL_COMPILER=1", "atc"]
    assert atc_argv[4:6] == ["--model=model.onnx", "--framework=5"] and "--output=model" in atc_argv
    assert shell.commands[-1] == ["rm", "-rf", str(tmp_path / "remote")] and not (tmp_path / "remote").exists()
    assert result["runner"] == "board" and load_manifest(bundle).graph.om == "model.om"
    assert shell.commands[-2][:2] == ["python3", "-c"] and result["cann"] == "8.0.RC1"  # asked on the board


def test_board_runner_failure_cleans_up_and_leaves_the_bundle(tmp_path, fake_atc_env, monkeypatch):
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    monkeypatch.setenv("FAKE_ATC_FAIL", "Killed")
    shell = LocalStandInShell(tmp_path / "remote")
    runner = BoardRunner(open_shell=lambda: contextlib.nullcontext(shell), board="orangepi")
    with pytest.raises(CompileError, match="out of memory"):
        compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="board", board="orangepi"), runner=runner)
    assert snapshot(bundle) == before and not (tmp_path / "remote").exists()


@pytest.fixture
def pi8_inventory(tmp_path, monkeypatch):
    """An inventory with one 8T board whose key does not exist, so nothing ever connects."""
    inv = tmp_path / "inventory.yml"
    inv.write_text("boards:\n  - {name: pi8, host: 127.0.0.1, user: u, key: /nonexistent/key, path: /opt/e, "
                   "backend: acl, soc: Ascend310B4}\n")
    monkeypatch.setenv("EDGE_LLM_INVENTORY", str(inv))
    return inv


def test_board_soc_in_the_inventory_must_match(tmp_path, pi8_inventory, capsys):
    bundle = make_bundle(tmp_path)
    rc = main(["compile", "--bundle", str(bundle), "--soc", "20T", "--runner", "board", "--board", "pi8"])
    err = capsys.readouterr().err
    assert rc == 2 and "board pi8 is Ascend310B4 (8T) in the inventory but --soc is Ascend310B1 (20T)" in err


def test_local_runner_find_uses_the_given_path(tmp_path):
    assert LocalRunner.find({"PATH": str(FAKE_BIN)}).atc == str(FAKE_BIN / "atc")
    with pytest.raises(ToolMissing):
        LocalRunner.find({"PATH": str(tmp_path)})


def test_unreachable_board_is_one_line_and_leaves_the_bundle(tmp_path, pi8_inventory, capsys):
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    rc = main(["compile", "--bundle", str(bundle), "--soc", "8T", "--runner", "board", "--board", "pi8"])
    err = capsys.readouterr().err
    *progress, error = err.strip().splitlines()  # the compile's own notes, then one line for the failure
    assert rc == 2 and error.startswith("error: board pi8:") and "/nonexistent/key" in error
    assert all(line.startswith("compile: ") for line in progress) and snapshot(bundle) == before


def test_real_ascend_bundle_compiles_through_the_stand_in_atc(tmp_path, fake_atc_env):
    bundle = build_test_bundle(tmp_path / "b", quant="w8a8", target="ascend")
    result = compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"))
    assert result["input_shape"] == "input_ids:1,-1;attention_mask:1,-1;position_ids:1,-1;past_key_values:4,2,64,16"
    assert result["dynamic_dims"] == "1,65,1;8,72,8;16,80,16"
    m = load_manifest(bundle)
    assert m.graph.om == "model.om" and m.files["model.om"].sha256 == result["sha256"]
    assert {"model.onnx", "tokenizer.json", "report.json", "model.om"} <= set(m.files)
    # ATC parsed AscendQuant in place of every activation Cast(to int8): one per integer matmul
    ops = {n.op_type for n in onnx.load(str(bundle / "model.onnx")).graph.node}
    matmuls = [n for n in onnx.load(str(bundle / "model.onnx")).graph.node if n.op_type == "MatMulInteger"]
    assert result["int8"] == {"int8_op": "AscendQuant", "replaced": len(matmuls), "kept": 0, "note": ""}
    assert "AscendQuant" in (bundle / "model.om").read_text().splitlines()[-1] and "AscendQuant" not in ops


def test_a_failed_manifest_write_puts_the_previous_om_back(tmp_path, fake_atc_env, monkeypatch):
    bundle = make_bundle(tmp_path)
    compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"))
    before = snapshot(bundle)

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("host.ascend.install.write_manifest", disk_full)
    with pytest.raises(CompileError, match="No space left on device.*the bundle is as it was"):
        compile_bundle(CompileConfig(bundle, "Ascend310B4", runner="local"))
    assert snapshot(bundle) == before
    load_manifest(bundle)


# --- cross-compiling: --host_env_os/--host_env_cpu and the .om name ATC then writes ---------
# CANN's ATC reference: set both when the compile machine's OS/CPU differ from the machine the .om runs
# on; an .om tied to one OS/CPU is named xxx_linux_<cpu>.om (see host/ascend/compile.py for the sources).
def test_host_env_flags_only_when_atc_runs_on_another_cpu():
    assert host_env_args("x86_64") == host_env_args("AMD64") == ["--host_env_os=linux", "--host_env_cpu=aarch64"]
    assert host_env_args("aarch64") == host_env_args("arm64") == host_env_args(None) == []
    m = make_manifest(5, 4, 8, 64, [1, 16])
    cmd = derive_atc_command(m, "20T", "m.onnx", "/w/model", compile_machine="x86_64")
    assert cmd.argv[-3:] == ["--host_env_os=linux", "--host_env_cpu=aarch64", "--log=error"]
    assert cmd.host_env == "linux/aarch64" and "cross-compiled" in cmd.summary()
    assert derive_atc_command(m, "20T", "m.onnx", "/w/model", compile_machine="aarch64").host_env is None


def test_produced_om_takes_the_plain_or_the_board_tagged_name_and_refuses_another_cpu():
    assert produced_om(["model.om", "model_linux_aarch64.om"]) == "model.om"
    assert produced_om(["fusion_result.json", "model_linux_aarch64.om"]) == "model_linux_aarch64.om"
    assert produced_om(["model.onnx", "other_linux_aarch64.om"]) is None
    with pytest.raises(CompileError, match="model_linux_x86_64.om, an .om for linux/x86_64: it will not load"):
        produced_om(["model_linux_x86_64.om"])


def test_x86_host_cross_compiles_and_the_tagged_om_becomes_model_om(tmp_path, fake_atc_env):
    bundle = make_bundle(tmp_path)
    runner = LocalRunner(atc=str(FAKE_BIN / "atc"), env=dict(os.environ), machine="x86_64")
    result = compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"), runner=runner)
    om = (bundle / "model.om").read_bytes()  # the stand-in wrote model_linux_aarch64.om, as ATC documents
    assert b"--host_env_os=linux\n--host_env_cpu=aarch64" in om and result["host_env"] == "linux/aarch64"
    assert load_manifest(bundle).files["model.om"].sha256 == result["sha256"]
    assert not list(bundle.glob("*_linux_*"))


def test_compiling_on_aarch64_passes_no_host_env(tmp_path, fake_atc_env, monkeypatch):
    bundle = make_bundle(tmp_path)
    runner = LocalRunner(atc=str(FAKE_BIN / "atc"), env=dict(os.environ), machine="aarch64")
    result = compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"), runner=runner)
    assert b"host_env" not in (bundle / "model.om").read_bytes() and result["host_env"] is None
    # a dynamic-shape .om that ATC ties to its own CPU: model_linux_aarch64.om on the board is taken too
    monkeypatch.setenv("FAKE_ATC_OM_NAME", "tagged")
    monkeypatch.setenv("FAKE_ATC_MACHINE", "aarch64")
    runner = LocalRunner(atc=str(FAKE_BIN / "atc"), env=dict(os.environ), machine="aarch64")
    assert compile_bundle(CompileConfig(bundle, "Ascend310B4", runner="local"), runner=runner)["soc"] == "Ascend310B4"


def test_an_om_tied_to_the_workstation_cpu_is_refused_and_the_bundle_kept(tmp_path, fake_atc_env, monkeypatch):
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    monkeypatch.setenv("FAKE_ATC_OM_NAME", "tagged")  # ATC ran on x86_64 without the flags (an older host)
    monkeypatch.setenv("FAKE_ATC_MACHINE", "x86_64")
    runner = LocalRunner(atc=str(FAKE_BIN / "atc"), env=dict(os.environ), machine="aarch64")
    with pytest.raises(CompileError, match="model_linux_x86_64.om.*will not load on the board"):
        compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="local"), runner=runner)
    assert snapshot(bundle) == before


def test_board_runner_fetches_a_tagged_om_as_model_om(tmp_path, fake_atc_env, monkeypatch):
    bundle = make_bundle(tmp_path)
    monkeypatch.setenv("FAKE_ATC_OM_NAME", "tagged")
    monkeypatch.setenv("FAKE_ATC_MACHINE", "aarch64")
    shell = LocalStandInShell(tmp_path / "remote")
    runner = BoardRunner(open_shell=lambda: contextlib.nullcontext(shell), board="orangepi")
    result = compile_bundle(CompileConfig(bundle, "20T", runner="board", board="orangepi"), runner=runner)
    atc_argv = next(c for c in shell.commands if "atc" in c)
    assert not any(a.startswith("--host_env") for a in atc_argv)  # ATC runs on the board's own CPU
    assert result["host_env"] is None and (bundle / "model.om").read_bytes().startswith(b"FAKE-OM")


def test_docker_image_architecture_decides_the_host_env(tmp_path):
    class Image:
        attrs = {"Architecture": "amd64"}

    class AmdClient(StandInDockerClient):
        def get(self, tag):
            super().get(tag)
            return Image()

    bundle = make_bundle(tmp_path)
    client = AmdClient(toolkit_home=fake_toolkit(tmp_path, "8.0.0"))
    runner = DockerRunner.connect("edge-llm/cann:8.0.0-310b", client_factory=lambda: client)
    assert runner.machine == "x86_64"
    result = compile_bundle(CompileConfig(bundle, "Ascend310B1", runner="docker"), runner=runner)
    assert "--host_env_cpu=aarch64" in client.calls[0]["command"] and result["host_env"] == "linux/aarch64"


def test_dry_run_shows_the_host_env_of_this_machine(tmp_path, capsys, monkeypatch):
    bundle = make_bundle(tmp_path)
    for machine, flags in (("x86_64", True), ("aarch64", False)):
        monkeypatch.setattr("host.ascend.compile.platform.machine", lambda m=machine: m)
        assert main(["compile", "--bundle", str(bundle), "--soc", "20T", "--dry-run", "--json"]) == 0
        assert ("--host_env_cpu=aarch64" in json.loads(capsys.readouterr().out)["argv"]) is flags


def test_compiling_an_onnxruntime_bundle_fails_before_atc_and_names_the_build_for_the_npu(tiny_w8a8_bundle, fake_atc_env,
                                                                                         capsys):
    before = snapshot(tiny_w8a8_bundle)
    assert main(["compile", "--bundle", str(tiny_w8a8_bundle), "--soc", "20T", "--runner", "local"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("this bundle is built for onnxruntime (--target ort); rebuild it for the NPU: "
                                           "python -m host build --model tiny-random-llama ")
    assert "compile: local:" not in err and snapshot(tiny_w8a8_bundle) == before  # ATC never ran
