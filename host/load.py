"""Load a model of a supported family (host.families) for the build: a Hugging Face checkpoint
directory, a hub id (when online), or a llama2.c `.bin` checkpoint; always a fp32 eval-mode
`*ForCausalLM` of transformers.

Also reads the architecture numbers the manifest records (`arch_numbers`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from host.errors import InputError, first_line
from host.families import family_of

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FILE_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".json", ".model", ".gguf")
HUB_FILES = ["*.json", "*.jinja", "tokenizer.model"]


@dataclass
class LoadedModel:
    model: object  # transformers LlamaForCausalLM or Qwen2ForCausalLM, fp32, eval mode
    name: str
    source: str  # what was asked for: a resolved path or a hub id
    model_dir: Path | None  # the checkpoint's directory: where its tokenizer is looked for
    tokenizer: object = None  # a TokenizerBundle when the model file carries its own (GGUF)

    @property
    def config(self):
        return self.model.config


def load_model(spec: str) -> LoadedModel:
    """Load `spec` (checkpoint directory, GGUF file, llama2.c .bin, or hub id); InputError naming the fix."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return LoadedModel(load_hf_dir(path), path.resolve().name, str(path.resolve()), path.resolve())
    if path.is_file() and path.suffix == ".gguf":
        from host.gguf import load_gguf

        model, tokenizer = load_gguf(path.resolve())
        return LoadedModel(model, path.stem, str(path.resolve()), path.resolve().parent, tokenizer)
    if path.is_file():
        return LoadedModel(load_llama2c(path), path.stem, str(path.resolve()), path.resolve().parent)
    if HUB_ID.match(spec) and not spec.endswith(FILE_SUFFIXES):
        directory = download_from_hub(spec)
        return LoadedModel(load_hf_dir(directory), spec, spec, directory)
    raise InputError(
        f"{spec}: no such file or directory; pass a Hugging Face checkpoint directory, a .gguf, a llama2.c .bin or a hub id"
    )


# --- llama2.c ---------------------------------------------------------------------------------
def load_llama2c(path: Path):
    """A llama2.c checkpoint converted to LlamaForCausalLM (see host.llama2c)."""
    from host.llama2c import load_llama2c_model

    if path.suffix != ".bin":
        raise InputError(f"{path}: not a model (expected a llama2.c .bin or a Hugging Face checkpoint directory)")
    return load_llama2c_model(path)[0]


# --- Hugging Face -----------------------------------------------------------------------------
def read_config_json(directory: Path) -> dict:
    """config.json of a checkpoint directory, checked to be of a supported family (host.families)."""
    path = directory / "config.json"
    if not path.is_file():
        raise InputError(f"{directory}: no config.json; pass a Hugging Face checkpoint directory or a llama2.c .bin")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}); re-download the checkpoint") from None
    family_of(config.get("model_type"), config.get("architectures"), str(path))
    return config


def weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise InputError(f"{directory}: no *.safetensors or pytorch_model*.bin weights; the checkpoint is incomplete")
    return files


def load_hf_dir(directory: Path):
    """The family's *ForCausalLM in fp32 from a checkpoint directory; refuses one with missing weights."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    read_config_json(directory)
    weight_files(directory)
    try:
        # transformers 5 loads shard by shard onto meta-initialised modules: peak ~ one fp32 copy
        model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise InputError(f"{directory}: cannot load the checkpoint ({first_line(e)}); re-download it") from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        missing = sorted(info.get("missing_keys") or []) + [str(k[0]) for k in info.get("mismatched_keys") or []]
        raise InputError(
            f"{directory}: the weights do not fill the model (missing or mis-shaped: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}); the checkpoint is incomplete or for another config"
        )
    return model.float().eval()



def download_from_hub(hub_id: str) -> Path:
    """Snapshot of a hub model's config, tokenizer and weights; InputError when offline."""
    try:
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(hub_id, allow_patterns=HUB_FILES + ["*.safetensors"]))
        if not list(directory.glob("*.safetensors")):  # older repos ship only PyTorch pickles
            directory = Path(snapshot_download(hub_id, allow_patterns=HUB_FILES + ["pytorch_model*.bin"]))
    except Exception as e:  # connection, auth and not-found errors all end the same way for the user
        raise InputError(
            f"{hub_id}: not a local path, and the Hugging Face hub is unreachable or has no such model "
            f"({type(e).__name__}); download the checkpoint elsewhere and pass its local directory"
        ) from None
    return directory


# --- numbers for the manifest -----------------------------------------------------------------
def rope_theta(config) -> float:
    """RoPE base: transformers 5 keeps it in `rope_parameters`, 4.x in `rope_theta`."""
    params = getattr(config, "rope_parameters", None) or {}
    if "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        raise InputError("the model config names no RoPE base (rope_theta); add it to config.json")
    return float(theta)


def arch_numbers(config) -> dict:
    """The fields of board.manifest.Arch, read from a LlamaConfig."""
    heads = config.num_attention_heads
    return dict(
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        rope_theta=rope_theta(config),
        rms_norm_eps=float(config.rms_norm_eps),
        max_position_embeddings=config.max_position_embeddings,
    )
