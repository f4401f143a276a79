"""Bad input to `python -m board`: non-UTF-8 text goes on with U+FFFD, bad options are one line and exit 2,
a programming error keeps its traceback, and a generation cut by the position range says so."""
import json
import subprocess
import sys

import pytest

import board.__main__ as cli
from tests.support.paths import ROOT


def board(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "board", *args], cwd=ROOT, input=stdin, capture_output=True, timeout=120)


def test_non_utf8_chat_input_and_prompt_are_read_with_replacement(tiny_bundle):
    chat = board("chat", "--bundle", tiny_bundle, "--max-new-tokens", "4", "--greedy", stdin=b"caf\xe9\n/exit\n")
    assert chat.returncode == 0 and b"Traceback" not in chat.stderr, chat.stderr
    gen = board("generate", "--bundle", tiny_bundle, "--prompt", b"caf\xe9", "--max-new-tokens", "4", "--greedy", "--json")
    assert gen.returncode == 0 and b"Traceback" not in gen.stderr, gen.stderr
    replaced = board("generate", "--bundle", tiny_bundle, "--prompt", "caf\ufffd", "--max-new-tokens", "4", "--greedy", "--json")
    same = [{k: json.loads(p.stdout)[k] for k in ("prompt_tokens", "tokens")} for p in (gen, replaced)]
    assert same[0] == same[1]  # the bad byte became U+FFFD, nothing else changed


@pytest.mark.parametrize("argv, words", [
    (["perplexity", "--text", "README.md", "--max-tokens", "0"], "--max-tokens 0"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["generate", "--prompt", "hi", "--temperature", "nan"], "temperature nan"),
    (["generate", "--prompt", "hi", "--repetition-penalty", "1e308"], "repetition_penalty"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens 0"),
])
def test_bad_options_are_one_line_and_exit_2(tiny_bundle, capsys, argv, words):
    assert cli.main([*argv, "--bundle", str(tiny_bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and words in err


def test_a_programming_error_is_not_turned_into_a_bad_input_line(tiny_bundle, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr("board.generate.generate", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["generate", "--bundle", str(tiny_bundle), "--prompt", "hi"])


def test_text_generate_stopped_by_the_position_range_says_so(tiny_bundle, capsys):
    # tiny bundle: 512 positions; a budget past them ends with finish_reason "context"
    assert cli.main(["generate", "--bundle", str(tiny_bundle), "--prompt", "Once", "--max-new-tokens", "600",
                     "--greedy"]) == 0
    err = capsys.readouterr().err
    assert err.strip() == "[stopped: the model's position limit of 512 tokens is reached]"


def test_generate_chat_auto_uses_the_template_of_a_chat_bundle_only(slow_bundle, tiny_bundle):
    def ids(bundle, *chat):
        p = board("generate", "--bundle", bundle, "--prompt", "hi", "--max-new-tokens", "2", "--greedy", "--json", *chat)
        assert p.returncode == 0, p.stderr
        return {k: json.loads(p.stdout)[k] for k in ("prompt_tokens", "tokens")}

    # slow_bundle has ChatML: auto wraps the prompt as --chat does; tiny_bundle has none: auto leaves it raw
    assert ids(slow_bundle, "--chat", "auto") == ids(slow_bundle, "--chat") != ids(slow_bundle)
    assert ids(tiny_bundle, "--chat", "auto") == ids(tiny_bundle)


def test_sampling_options_not_given_come_from_the_manifest_then_the_built_in_defaults(tiny_bundle, tmp_path, capsys):
    import shutil

    from board.manifest import read_manifest
    from board.sampling import SamplingConfig

    bundle = tmp_path / "greedy-model"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sampling"] = {"temperature": 0.0, "top_k": None, "top_p": None, "repetition_penalty": None}
    (bundle / "manifest.json").write_text(json.dumps(manifest))  # the manifest itself is not in `files`

    def tokens(path, *options):
        assert cli.main(["generate", "--bundle", str(path), "--prompt", "Once", "--max-new-tokens", "12", "--json", *options]) == 0
        return json.loads(capsys.readouterr().out)["tokens"]

    greedy = tokens(tiny_bundle, "--greedy")
    # a model whose generation_config says do_sample false answers greedily whatever the seed, unless told otherwise
    assert tokens(bundle, "--seed", "1") == tokens(bundle, "--seed", "2") == greedy
    assert tokens(bundle, "--temperature", "1.5", "--top-k", "0", "--seed", "1") != greedy
    # a model that says nothing gets SamplingConfig's defaults: the same draw as naming them
    builtin = SamplingConfig()
    named = ("--temperature", str(builtin.temperature), "--top-k", str(builtin.top_k), "--top-p", str(builtin.top_p))
    assert read_manifest(tiny_bundle).sampling == read_manifest(tiny_bundle).sampling.__class__()
    assert tokens(tiny_bundle, "--seed", "3") == tokens(tiny_bundle, "--seed", "3", *named)
