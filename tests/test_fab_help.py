"""`fab TASK --help` shows the task's options and runs nothing, for every task; a missing required option is one line."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.paths import ROOT
from tests.support.sshd import FAB


def fab(*args: str, inventory: str = "/nonexistent/inventory.yml") -> subprocess.CompletedProcess:
    """fab in the checkout with an inventory that does not exist: a task that runs fails on it, help does not."""
    env = {**os.environ, "EDGE_LLM_INVENTORY": inventory}
    return subprocess.run([str(FAB), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


TASKS = [t["name"] for t in json.loads(fab("--list", "--list-format", "json").stdout)["tasks"]]


def test_every_task_is_listed():
    assert {"deploy", "generate", "chat", "service", "serve", "setup", "doctor", "status"} <= set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_task_help_after_the_task_name_shows_the_help_and_runs_nothing(task):
    r = fab(task, "--help")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"Usage: fab [--core-opts] {task} [--options]") and "Options:" in r.stdout
    assert r.stderr == ""  # nothing ran: the missing inventory would have been named here


@pytest.mark.parametrize("task, line", [
    ("generate", "generate: give the prompt with --prompt TEXT (options: fab --help generate)"),
    ("deploy", "deploy: give the bundle with --bundle DIR (options: fab --help deploy)"),
])
def test_a_missing_required_option_is_one_line_and_exit_2(task, line):
    r = fab(task)
    assert (r.returncode, r.stderr.strip()) == (2, line)
