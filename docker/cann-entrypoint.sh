#!/usr/bin/env bash
# Entry point of the CANN image: load the toolkit environment, then run the given command (atc ...).
set -e
# shellcheck disable=SC1091
source /usr/local/Ascend/ascend-toolkit/set_env.sh
exec "$@"
