"""Errors of the board runtime; the CLI turns each into one line and a non-zero exit."""


class BoardError(Exception):
    """A runtime failure (backend missing, accelerator call failed, bad option); the message says the fix."""
