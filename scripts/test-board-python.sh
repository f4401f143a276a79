#!/usr/bin/env bash
# The board package's tests on another Python, as a board has it: a venv from PYTHON with the board's
# locked requirement set (board/locks/, the ones `fab setup` installs), and the fixture bundles prebuilt by
# the project venv, because the host pipeline needs torch and a board never has it.
#   scripts/test-board-python.sh "$(pyenv prefix 3.9.18)/bin/python3" [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: scripts/test-board-python.sh PYTHON [pytest args]}
shift
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=.venv-py$ver
lock=board/locks/onnxruntime-py$ver.txt
[ -f "$lock" ] || { echo "test-board-python: no locked set for Python $ver ($lock)" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo "test-board-python: run 'make setup' first (it builds the fixture bundles)" >&2; exit 2; }
# Fixture bundles for this set's onnxruntime, rebuilt when the code that writes them changed since.
ort=$(sed -n 's/^onnxruntime==//p' "$lock")
bundles=.venv/test-bundles/onnxruntime-$ort
if [ ! -f "$bundles/.stamp" ] || [ -n "$(find host board tests/support -name '*.py' -newer "$bundles/.stamp" | head -1)" ]; then
    echo "test-board-python: building the fixture bundles for onnxruntime $ort into $bundles"
    mkdir -p "$bundles"
    .venv/bin/python -m tests.support.prebuilt "$bundles" --onnxruntime "$ort" > "$bundles.log" 2>&1 ||
        { tail -20 "$bundles.log" >&2; exit 1; }
    touch "$bundles/.stamp"
fi
if [ ! -x "$venv/bin/python" ] || [ "$lock" -nt "$venv/.stamp" ]; then
    echo "test-board-python: $venv from $lock"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q -r "$lock" -r "board/locks/serve-py$ver.txt" -r tests/requirements-board.txt
    touch "$venv/.stamp"
fi
# The board's own tests: its library, CLI and server (not the host, deploy or browser tests).
EDGE_LLM_TEST_BUNDLES=$PWD/$bundles exec "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_board_*.py tests/test_serve_api.py "$@"
