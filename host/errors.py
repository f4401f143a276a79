"""Errors the host CLI turns into one clear line and exit status 2."""


def first_line(e: Exception) -> str:
    """The first line of a library's exception message (or its type), for a one-line error."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class InputError(Exception):
    """Bad user input (file, checkpoint, tokenizer, text, option); the message names it and the fix."""


class BuildError(Exception):
    """A stage of the build failed a check (e.g. the ONNX disagrees with PyTorch)."""
