"""Board side: the table of operations `python -c <onboard source> OP JSON` can run."""
from __future__ import annotations

from deploy.onboard import files, probe, store

OPS = files.operations(files, store, probe)
