"""`python -m board serve`: an OpenAI-compatible HTTP server and a web chat page for one bundle.

Needs the `serve` extra (Starlette + uvicorn; `pip install -r board/requirements-serve.txt`);
the rest of the board runtime does not.
"""
from __future__ import annotations

import sys

from board.bundle import open_bundle
from board.errors import BoardError
from board.serve.config import ServeConfig

EXTRA_HINT = "pip install -r board/requirements-serve.txt (or the project's [serve] extra; on a board `fab service install` does it)"


def serve(config: ServeConfig) -> int:
    """Run the server in the foreground until Ctrl-C or SIGTERM; returns the exit status."""
    try:
        import uvicorn

        from board.serve.app import Api
    except ImportError as e:
        raise BoardError(f"serving needs {e.name or 'starlette and uvicorn'}, which is not installed: {EXTRA_HINT}") from None
    open_bundle(config.bundle, verify=False)  # a wrong --bundle is one line now; loading and checksums follow in the background
    if config.exposed_without_key:
        print(f"warning: listening on {config.host} without --api-key: anyone who can reach this port can use the "
              "model; pass --api-key-file FILE", file=sys.stderr, flush=True)
    print(f"serving {config.bundle} at http://{config.host}:{config.port}/ (chat page) and /v1 (OpenAI API)",
          file=sys.stderr, flush=True)
    uvicorn.run(Api(config).app(), host=config.host, port=config.port, log_level="warning", access_log=False)
    return 0
