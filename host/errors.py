"""Errors the host CLI turns into one clear line and exit status 2."""


class InputError(Exception):
    """Bad user input (file, checkpoint, tokenizer, text, option); the message names it and the fix."""


class BuildError(Exception):
    """A stage of the build failed a check (e.g. the ONNX disagrees with PyTorch)."""
