"""How the deployer writes things for a person: byte counts, and strings it did not write itself."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def shown(text: str) -> str:
    """`text` with control and format characters as escapes (`\\x1b`, `\\u202e`).

    Lines carry strings from manifests and boards (model names, file names, errors); escaped,
    they cannot move the cursor, recolour the terminal or hide what follows them.
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
