"""inventory.yml: validation names the board and the field; EDGE_LLM_INVENTORY picks the file."""
from __future__ import annotations

import getpass
import sys

import pytest

from deploy.errors import InventoryError
from deploy.inventory import DEFAULT_INVENTORY, Board, inventory_path, load_inventory, parse_inventory, select
from tests.support.sshd import fab, write_inventory

MINIMAL = {"name": "pi-1", "host": "192.168.1.20", "user": "HwHiAiUser", "key": "~/.ssh/id_ed25519",
           "path": "/home/HwHiAiUser/edge-llm", "backend": "acl"}


def board(**changes) -> dict:
    entry = dict(MINIMAL, **changes)
    return {k: v for k, v in entry.items() if v is not None}


def error(*boards) -> str:
    with pytest.raises(InventoryError) as e:
        parse_inventory({"boards": list(boards)}, "inv.yml")
    return str(e.value)


def test_minimal_board_gets_the_documented_defaults():
    (b,) = parse_inventory({"boards": [board()]}, "inv.yml")
    assert b == Board(name="pi-1", host="192.168.1.20", user="HwHiAiUser", key="~/.ssh/id_ed25519",
                      path="/home/HwHiAiUser/edge-llm", backend="acl", port=22, known_hosts="~/.ssh/known_hosts",
                      python="python3", soc=None, trust_new_host=False, keep_releases=3)


@pytest.mark.parametrize("changes, message", [
    ({"host": None}, "inv.yml: board 'pi-1': missing field(s) host"),
    ({"port": "22x"}, "inv.yml: board 'pi-1': field 'port' must be an integer 1-65535 (got '22x')"),
    ({"port": 70000}, "inv.yml: board 'pi-1': field 'port' must be an integer 1-65535 (got 70000)"),
    ({"backend": "cuda"}, "inv.yml: board 'pi-1': field 'backend' must be one of onnxruntime, acl (got 'cuda')"),
    ({"soc": "Ascend910"}, "inv.yml: board 'pi-1': field 'soc' must be one of Ascend310B1, Ascend310B2, Ascend310B3, Ascend310B4 (20T boards are Ascend310B1, 8T boards are Ascend310B4) (got 'Ascend910')"),
    ({"path": "edge-llm"}, "inv.yml: board 'pi-1': field 'path' must be absolute or start with ~/ (e.g. /home/HwHiAiUser/edge-llm) (got 'edge-llm')"),
    ({"trust_new_host": "yes please"}, "inv.yml: board 'pi-1': field 'trust_new_host' must be true or false (got 'yes please')"),
    ({"keep_releases": 0}, "inv.yml: board 'pi-1': field 'keep_releases' must be an integer 1-100 (got 0)"),
    ({"hots": "x"}, "inv.yml: board 'pi-1': unknown field(s) hots; known: name, host, user, key, path, backend, port, "
                    "known_hosts, python, soc, trust_new_host, keep_releases, connect_timeout, cann_env, connection"),
    ({"name": None}, "inv.yml: board #1: missing field(s) name"),
])
def test_a_wrong_field_is_one_error_naming_the_board_and_the_field(changes, message):
    assert error(board(**changes)) == message


def test_board_names_must_be_unique():
    assert error(board(), board(host="10.0.0.2")) == "inv.yml: board 'pi-1': the name is used twice; board names must be unique"


def test_environment_variables_expand_and_an_unset_one_is_named(monkeypatch):
    monkeypatch.setenv("EDGE_TEST_USER", "alice")
    (b,) = parse_inventory({"boards": [board(user="${EDGE_TEST_USER}")]}, "inv.yml")
    assert b.user == "alice"
    monkeypatch.delenv("EDGE_TEST_USER")
    assert error(board(user="${EDGE_TEST_USER}")) == (
        "inv.yml: board 'pi-1': field 'user': ${EDGE_TEST_USER} is not set in the environment; set it or write the value")


def test_edge_llm_inventory_overrides_the_default_path(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGE_LLM_INVENTORY", raising=False)
    assert inventory_path() == DEFAULT_INVENTORY
    path = write_inventory(tmp_path / "mine.yml", board(name="mine"))
    monkeypatch.setenv("EDGE_LLM_INVENTORY", str(path))
    assert [b.name for b in load_inventory()] == ["mine"]


def test_the_shipped_inventory_is_this_machine_without_ssh():
    (b,) = load_inventory(DEFAULT_INVENTORY)
    assert (b.name, b.local, b.backend, b.path) == ("localhost", True, "onnxruntime", "~/edge-llm-board")
    assert (b.python, b.key, b.user) == (sys.executable, None, getpass.getuser())


def test_a_local_board_needs_only_name_path_and_backend_and_a_bad_connection_is_named():
    (b,) = parse_inventory({"boards": [{"name": "here", "connection": "local", "path": "/srv/b", "backend": "onnxruntime",
                                        "python": "/opt/py/bin/python3"}]}, "inv.yml")
    assert (b.local, b.python, b.host) == (True, "/opt/py/bin/python3", "localhost")
    assert error({"name": "pi-1", "connection": "local", "backend": "onnxruntime"}) == (
        "inv.yml: board 'pi-1': missing field(s) path")
    assert error(board(connection="telnet")) == (
        "inv.yml: board 'pi-1': field 'connection' must be one of ssh, local (got 'telnet')")
    assert error(board(key=None)) == "inv.yml: board 'pi-1': missing field(s) key"


def test_select_by_name_and_unknown_name_lists_the_boards():
    boards = parse_inventory({"boards": [board(), board(name="pi-2")]}, "inv.yml")
    assert [b.name for b in select(boards, "pi-2")] == ["pi-2"] and select(boards, None) == boards
    with pytest.raises(InventoryError, match=r"^no board named 'pi-3' in the inventory \(boards: pi-1, pi-2\)$"):
        select(boards, "pi-3")


def test_fab_with_a_broken_inventory_exits_2_with_one_line(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text("boards:\n  - name: pi-1\n    host: [unclosed\n")
    r = fab(path, "status")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"inventory: {path}: not valid YAML (")
    r = fab(tmp_path / "absent.yml", "status")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"inventory: {tmp_path / 'absent.yml'}: cannot read the inventory (No such file or directory); "
                                f"set EDGE_LLM_INVENTORY or create it")
