"""`edge-llm-fab`: Fabric's own CLI bound to deploy/tasks.py, so the tasks run from any directory."""
from __future__ import annotations

import fabric
from fabric import Config, Executor
from fabric.main import Fab
from invoke import Collection

from deploy import tasks


def program() -> Fab:
    """Fabric's program with deploy/tasks.py as its collection, wherever it runs."""
    return Fab(name="edge-llm-fab", version=fabric, executor_class=Executor, config_class=Config,
               namespace=Collection.from_module(tasks))


def main() -> None:
    """Run `edge-llm-fab [options] TASK ...` as `fab` would in a checkout."""
    program().run()
