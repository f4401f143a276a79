"""Fabric tasks: workstation -> boards. The boards are in inventory.yml (or $EDGE_LLM_INVENTORY).

`fab TASK` in a checkout (fabfile.py imports these), `edge-llm-fab TASK` anywhere once installed.

    fab deploy --bundle bundles/model [--board NAME] [--canary N]   upload, verify on the board, switch `current`
    fab chat | generate --prompt TEXT [--raw] | bench | status | rollback   [--board NAME]
    fab setup [--wheels DIR] [--with-plugin] | doctor [--bundle DIR] [--json]   prepare / check boards
    fab service install|start|stop|restart|status|logs [--port P] [--api-key-file F]   the OpenAI server
    fab serve [--board NAME] [--port P] [--local-port L]   the server in the foreground, port forwarded here
    fab gateway [--out FILE] [--run] [--port P]   an nginx config in front of the boards' servers (and nginx)

Each task acts on every board, or the one named; deploy, setup, doctor, status, rollback and service
act on up to --parallel N boards at once (default 8). The work lives in the rest of the deploy/ package.
`fab TASK --help` (or `fab --help TASK`) shows a task's options.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from board.manifest import BundleError
from deploy.errors import DeployError
from deploy import board_cli, boardsetup, fleet, gateway as front, release
from deploy import doctor as checkup
from deploy.payload import collect
from deploy import service as board_service
from deploy.progress import Progress
from deploy.status import board_status, row, status_line, table
from deploy.text import shown


def _bundle(path, what, verify=True):
    """The local bundle with board/ code; a corrupt one ends the task with one line."""
    try:
        return collect(path, verify=verify)
    except BundleError as e:
        raise Exit(shown(f"{what}: {e}"), code=2) from None


PARALLEL = "boards at once (default: min(8, boards); 1: one after another)"


@task(help={"bundle": "bundle directory (from `python -m host build`)", "board": "only this board",
            "no_reuse": "upload every file even when the board already has it", "parallel": PARALLEL,
            "canary": "deploy to the first N boards, check them (service health), then the rest; stop at a failure"})
def deploy(c, bundle=None, board=None, no_reuse=False, parallel=None, canary=None):
    """Upload a bundle and board/ code, verify every sha256 on the board, switch `current`."""
    if bundle is None:
        raise Exit("deploy: give the bundle with --bundle DIR (options: fab --help deploy)", code=2)
    chosen = fleet.boards(board)
    workers = fleet.workers(parallel, chosen, "deploy")
    first = fleet.count(canary, "canary", "deploy") if canary is not None else 0
    payload = _bundle(bundle, "refusing to deploy")

    def one(remote):
        report = release.deploy(remote, payload, Progress(remote.board.name), reuse=not no_reuse)
        print(report.line(remote.board.name), flush=True)
        restarted = board_service.after_deploy(remote, report.release_id, report.previous)  # None: no service
        if restarted:
            print(restarted)
        return release.switched(report.release_id, report.previous)  # said again if Ctrl-C stops the fleet

    fleet.on_each(chosen, one, "deploy", workers, canary=first)


@task(help={"board": "only this board", "parallel": PARALLEL})
def rollback(c, board=None, parallel=None):
    """Make the previously deployed release current again."""
    chosen = fleet.boards(board)
    fleet.on_each(chosen, lambda remote: print(release.rollback(remote)), "rollback", fleet.workers(parallel, chosen, "rollback"))


@task(help={"board": "only this board", "json": "JSON: an object for one board, a list for several",
            "parallel": PARALLEL})
def status(c, board=None, json_=False, parallel=None):
    """Current release, model, service, last bench's tok/s, free memory and disk: a line, or a table for several."""
    chosen = fleet.boards(board)

    def show(results):
        found = [value for value in results.values() if isinstance(value, dict)]
        if len(chosen) == 1 and not found:
            return  # its error follows, on stderr
        if json_:
            print(json.dumps(found[0] if len(chosen) == 1 else found))
        elif len(chosen) == 1:
            print(status_line(found[0]))
        else:
            rows = [row(v) if isinstance(v, dict) else [b.name, "(failed)"] + ["-"] * 6 for b, v in results.items()]
            print("\n".join(table(rows)))

    fleet.on_each(chosen, board_status, "status", fleet.workers(parallel, chosen, "status"), report=show)


@task(help={"prompt": "the prompt (a question to a chat model)", "max_new_tokens": "tokens to generate",
            "greedy": "greedy decoding", "raw": "continue the prompt's text, without the chat template",
            "board": "only this board"})
def generate(c, prompt=None, max_new_tokens="64", greedy=False, raw=False, board=None):  # str: checked by fleet.count
    """Answer a prompt on the board's current release (chat template when the bundle has one) and print it."""
    # prompt and bundle (deploy) default to None: Invoke makes a parameter without a default positional,
    # and a positional takes any word as its value, `--help` too (`fab generate --help` generated from it)
    if prompt is None:
        raise Exit("generate: give the prompt with --prompt TEXT (options: fab --help generate)", code=2)
    count = fleet.count(max_new_tokens, "max-new-tokens", "generate")
    chosen = fleet.boards(board)

    def one(remote):
        if len(chosen) == 1:  # one board: stream the text as the board produces it
            board_cli.generate(remote, prompt, count, greedy, stream=True, raw=raw)
        else:
            print(f"[{remote.board.name}] {board_cli.generate(remote, prompt, count, greedy, raw=raw)}", end="")

    fleet.on_each(chosen, one, "generate")


@task(help={"prompt_tokens": "prompt length", "new_tokens": "tokens to generate", "board": "only this board"})
def bench(c, prompt_tokens="64", new_tokens="64", board=None):
    """Run the board's benchmark; one JSON line per board."""
    prompt, new = fleet.count(prompt_tokens, "prompt-tokens", "bench"), fleet.count(new_tokens, "new-tokens", "bench")
    fleet.on_each(fleet.boards(board), lambda remote: print(json.dumps(board_cli.bench(remote, prompt, new, record=True))),
                  "bench")


@task(help={"board": "the board to talk to (needed when the inventory has several)"})
def chat(c, board=None):
    """Interactive chat with the board's current release (Ctrl-D to quit)."""
    results = fleet.on_each([fleet.one_board(board, "chat")], board_cli.chat, "chat")
    code = next(iter(results.values()))
    if code != 0:
        raise Exit(code=code)


@task(help={"board": "only this board", "bundle": "compare memory and disk with this bundle (default: the current release)",
            "json": "one JSON object per board", "parallel": PARALLEL})
def doctor(c, board=None, bundle=None, json_=False, parallel=None):
    """Read-only checks: can each board run the bundle? One line per check, with the fix."""
    payload = _bundle(bundle, "doctor", verify=False) if bundle else None
    chosen = fleet.boards(board)
    found = fleet.run(chosen, lambda remote: checkup.examine(remote, payload), "doctor", fleet.workers(parallel, chosen, "doctor"))
    results = [(b, checkup.unreachable(value) if isinstance(value, DeployError) else value) for b, value in found.items()]
    for b, checks in results:
        if json_:
            print(json.dumps(checkup.report_json(b, checks)))
        else:
            print("\n".join(checkup.report_lines(b, checks)))
    if not all(checkup.ready(checks) for _, checks in results):
        raise Exit(code=1)


@task(help={"board": "only this board", "wheels": "directory of wheels to install from, offline (pip --no-index)",
            "with_plugin": "build and install the custom op plugin from docker/plugin/ (needs CANN on the board)",
            "system_site_packages": "let the venv see the board python's own packages", "parallel": PARALLEL})
def setup(c, board=None, wheels=None, with_plugin=False, system_site_packages=False, parallel=None):
    """Make boards ready: install path, venv with board/requirements.txt, CANN env.sh, plugin. Idempotent."""

    def one(remote):
        steps = boardsetup.setup(remote, wheels and Path(wheels), with_plugin, system_site_packages)
        print("\n".join(boardsetup.setup_lines(remote.board.name, steps)))

    chosen = fleet.boards(board)
    fleet.on_each(chosen, one, "setup", fleet.workers(parallel, chosen, "setup"))


SERVICE_ACTIONS = ("install", "start", "stop", "restart", "status", "logs")


@task(help={"action": "|".join(SERVICE_ACTIONS), "port": "port the server listens on (install; default 8080)",
            "host": "address to listen on (install; 0.0.0.0 for the network: give a key)",
            "api_key_file": "local file holding the API key clients must send (install)",
            "board": "only this board", "lines": "log lines to show (logs)", "parallel": PARALLEL})
def service(c, action, port=8080, host="127.0.0.1", api_key_file=None, board=None, lines=50, parallel=None):
    """Run `python -m board serve` as a systemd service (fallback: a background process) on each board."""
    if action in ("-h", "--help"):  # the positional action takes any word: show the help `fab --help service` shows
        from deploy.cli import program  # it imports this module

        program().run(["fab", "--help", "service"], exit=False)
        return
    if action not in SERVICE_ACTIONS:
        raise Exit(f"service: unknown action {action!r}; use one of {', '.join(SERVICE_ACTIONS)}", code=2)
    key = Path(api_key_file) if api_key_file else None
    if key and not key.is_file():
        raise Exit(f"service: --api-key-file {key} does not exist; write the key into a file first", code=2)
    opts = board_service.ServiceOptions(port=int(port), host=host)
    do = {"install": lambda r: "\n".join(board_service.install(r, opts, key)),
          "status": board_service.status, "logs": lambda r: board_service.logs(r, int(lines))}
    act = do.get(action, lambda r: board_service.control(r, action))
    chosen = fleet.boards(board)
    fleet.on_each(chosen, lambda remote: print(act(remote)), f"service {action}", fleet.workers(parallel, chosen, "service"))


@task(help={"board": "the board (needed when the inventory has several)", "port": "port on the board",
            "local_port": "port on this machine (default: the same)"})
def serve(c, board=None, port=8080, local_port=None):
    """Run the board's server in the foreground and forward its port here (Ctrl-C stops)."""
    results = fleet.on_each([fleet.one_board(board, "serve")],
                            lambda remote: board_service.foreground(remote, int(port), int(local_port or port)), "serve")
    code = next(iter(results.values()))
    if code not in (0, 130):  # 130: stopped with Ctrl-C
        raise Exit(code=code)


@task(help={"out": "write the nginx config here (default: print it; with --run, a temporary directory)",
            "run": "start nginx with it here, in the foreground (Ctrl-C stops)",
            "port": "port the gateway listens on (default 8000)",
            "host": "address it listens on (default 127.0.0.1; 0.0.0.0 for the network)", "board": "only this board"})
def gateway(c, out=None, run=False, port=8000, host="127.0.0.1", board=None):
    """One address for many boards: an nginx config (least connections, streaming unbuffered) over their servers."""
    chosen = fleet.boards(board)
    found = fleet.run(chosen, front.upstream, "gateway", fleet.workers(None, chosen, "gateway"))
    servers = front.servers(found)
    text = front.config(servers, host, int(port))
    if not run and not out:
        print(text, end="")
        return
    path = front.write(text, Path(out) if out else None)
    if not run:
        print(f"gateway: {path}: nginx config for {len(servers)} board(s); run it with `nginx -p DIR -c {path}` "
              f"or `fab gateway --run`", file=sys.stderr)
        return
    raise Exit(code=front.run_nginx(path, host, int(port), servers))
