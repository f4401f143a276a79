"""The bundle integrity rule (board/bundle.py) and manifest validation, against tampered copies of a real bundle.

Every file the board opens is a plain relative name listed in `files`, inside the bundle, not a
symlink, as large as declared; bad names are refused before anything is hashed; malformed
manifests are one line and a non-zero exit, never a traceback.
"""
import json
import os
import shutil

import pytest

import board.manifest
from board.__main__ import main
from board.bundle import member_path, name_problem, open_bundle
from board.chat_template import render_messages
from board.manifest import BundleError, load_manifest


@pytest.fixture()
def copy(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle and a function that rewrites its manifest."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)

    def edit(change):
        path = bundle / "manifest.json"
        data = json.loads(path.read_text())
        data = change(data) or data
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return bundle

    return bundle, edit


@pytest.fixture()
def hashed(monkeypatch):
    """Names of the files sha256'd by the board while the test runs."""
    calls = []
    real = board.manifest.sha256_file
    monkeypatch.setattr(board.manifest, "sha256_file", lambda path, *a: calls.append(path) or real(path, *a))
    return calls


def one_error_line(capsys, argv, rc):
    assert main(argv) == rc
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("name", ["../../x", "/etc/hostname", "a/../../b", "./model.onnx", "a//b", "a\\..\\b", ""])
def test_name_rule_refuses_anything_but_a_plain_relative_name(name):
    assert name_problem(name) is not None
    assert name_problem("model.onnx") is None and name_problem("sub/model.onnx.data") is None


@pytest.mark.parametrize("name", ["../../outside", "/etc/hostname"])
def test_escaping_names_in_files_are_refused_before_hashing_anything(copy, hashed, capsys, name):
    bundle, edit = copy
    (bundle.parent / "outside").write_text("x")
    edit(lambda d: d["files"].update({name: {"size": 1, "sha256": "0" * 64}}))
    with pytest.raises(BundleError, match="could escape|absolute path"):
        load_manifest(bundle)
    assert hashed == []
    assert repr(name) in one_error_line(capsys, ["verify", "--bundle", str(bundle)], 1)


@pytest.mark.parametrize("field", ["onnx", "tokenizer"])
def test_a_loaded_file_must_be_listed_in_files(copy, capsys, field):
    bundle, edit = copy
    shutil.copy(bundle / "model.onnx", bundle / "unlisted.onnx")
    shutil.copy(bundle / "tokenizer.json", bundle.parent / "tok.json")
    if field == "onnx":
        edit(lambda d: d["graph"].update(onnx="unlisted.onnx"))
    else:
        edit(lambda d: d.update(tokenizer="../tok.json"))
    err = one_error_line(capsys, ["verify", "--bundle", str(bundle)], 1)
    assert "not listed in `files`" in err
    one_error_line(capsys, ["generate", "--bundle", str(bundle), "--prompt", "hi", "--no-verify"], 2)


def test_a_symlink_out_of_the_bundle_is_refused_even_with_the_right_content(copy, capsys):
    bundle, _ = copy
    outside = bundle.parent / "tokenizer.json"
    shutil.move(bundle / "tokenizer.json", outside)
    os.symlink(outside, bundle / "tokenizer.json")
    err = one_error_line(capsys, ["verify", "--bundle", str(bundle)], 1)
    assert "symlink" in err and "tokenizer.json" in err
    with pytest.raises(BundleError, match="symlink"):
        open_bundle(bundle, verify=False)


def test_declared_size_must_equal_the_real_size_before_hashing(copy, hashed):
    bundle, edit = copy
    real = (bundle / "model.onnx").stat().st_size
    edit(lambda d: d["files"]["model.onnx"].update(size=10**15))
    with pytest.raises(BundleError, match=f"{real} bytes but the manifest declares {10**15}"):
        load_manifest(bundle)
    assert hashed == []
    assert member_path(bundle, "model.onnx", real) == bundle / "model.onnx"


@pytest.mark.parametrize("change, words", [
    (lambda d: [d], "not list"),
    (lambda d: "null", "not NoneType"),
    (lambda d: d.update(files=[["model.onnx", 1]]), "files"),
    (lambda d: "[" * 100000 + "]" * 100000, "unreadable manifest"),
    (lambda d: d["graph"].update(kv_len=10**12), "kv_len"),
    (lambda d: d["graph"].update(kv_len="64"), "kv_len"),
    (lambda d: d["graph"].update(max_positions=0), "graph.max_positions"),
    (lambda d: d["graph"].update(max_positions=32), "graph.kv_len 64 must be"),  # fewer positions than KV slots
    (lambda d: d["graph"].update(cache="ring"), "cache unknown"),
    (lambda d: d.update(format_version=True), "format_version True"),
    (lambda d: d.update(format_version=1.0), "format_version 1.0"),
    (lambda d: d["arch"].update(num_layers=True), "num_layers"),
    (lambda d: d["files"]["model.onnx"].update(sha256="zz"), "sha256"),
])
def test_malformed_manifests_are_one_line_and_exit_2(copy, capsys, change, words):
    bundle = copy[1](change)
    assert words in one_error_line(capsys, ["info", "--bundle", str(bundle)], 2)


ZEPHYR_RULES = {"name": "zephyr", "system": "<|system|>\n{content}</s>\n", "user": "<|user|>\n{content}</s>\n",
                "assistant": "<|assistant|>\n{content}</s>\n", "generation_prompt": "<|assistant|>\n", "default_system": "",
                "system_in_user": "", "stop_strings": ["<|user|>", "<|system|>"]}


def _as_version_1(d):
    """The manifest as a format-1 build wrote it: the built-in Zephyr rules, no Jinja template, no stop ids, no sampling."""
    d["chat_template"] = dict(ZEPHYR_RULES)
    d["tokens"].pop("stop_ids")
    d.pop("sampling")
    d.update(format_version=1)


def test_a_format_1_manifest_still_loads_with_its_rules_template_as_the_built_in_file(copy):
    bundle, edit = copy
    edit(_as_version_1)
    m = load_manifest(bundle)
    assert (m.format_version, m.tokens.stop_ids, m.sampling) == (1, [], board.manifest.Sampling())
    assert m.chat_template == board.manifest.builtin_chat_template("zephyr")
    assert render_messages(m.chat_template, [{"role": "user", "content": "Hi"}]) == "<|user|>\nHi</s>\n<|assistant|>\n"


def test_a_format_8_manifest_with_rule_fields_or_a_newer_version_is_refused(copy):
    bundle, edit = copy
    edit(lambda d: d.update(chat_template=dict(ZEPHYR_RULES)))
    with pytest.raises(BundleError, match=r"unexpected keyword argument 'system'; rebuild the bundle"):
        load_manifest(bundle)
    edit(lambda d: d.update(format_version=board.manifest.FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match=r"format_version 9 is not supported .*knows \[1, 2, 3, 4, 5, 6, 7, 8\]\); rebuild the bundle or update board/"):
        load_manifest(bundle)
