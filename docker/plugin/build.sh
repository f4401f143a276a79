#!/usr/bin/env bash
# Build the MatMulInteger ONNX parser plugin and install it where ATC looks.
#   docker/plugin/build.sh                 # into $ASCEND_OPP_PATH/vendors/edge_llm (+ config.ini)
#   docker/plugin/build.sh --prefix DIR    # into DIR/vendors/edge_llm; then
#       export ASCEND_CUSTOM_OPP_PATH=DIR/vendors/edge_llm
# Needs a CANN toolkit (source .../ascend-toolkit/set_env.sh first), cmake and g++.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ascend_home="${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit/latest}"
prefix="${ASCEND_OPP_PATH:-$ascend_home/opp}"
custom_prefix=0
if [ "${1:-}" = "--prefix" ]; then prefix="$2"; custom_prefix=1; fi

if [ ! -f "$ascend_home/include/register/register.h" ]; then
    echo "build.sh: no CANN toolkit at $ascend_home; source <toolkit>/set_env.sh or set ASCEND_TOOLKIT_HOME" >&2
    exit 1
fi
for tool in cmake g++; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found; apt-get install cmake g++" >&2; exit 1; }
done

build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cmake -S "$here" -B "$build" -DASCEND_HOME="$ascend_home" -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)"
cmake --install "$build"

lib="$prefix/vendors/edge_llm/framework/onnx/libcust_onnx_parsers.so"
grep -q MatMulInteger "$lib" || { echo "build.sh: $lib does not register MatMulInteger" >&2; exit 1; }

# Vendors under the opp directory load in the order of vendors/config.ini's load_priority.
if [ "$custom_prefix" = 0 ]; then
    ini="$prefix/vendors/config.ini"
    if [ ! -f "$ini" ]; then
        echo "load_priority=edge_llm" > "$ini"
    elif ! grep -q "edge_llm" "$ini"; then
        sed -i 's/^load_priority=\(.*\)$/load_priority=edge_llm,\1/' "$ini"
    fi
    echo "installed $lib (vendors/config.ini: $(cat "$ini"))"
else
    echo "installed $lib; export ASCEND_CUSTOM_OPP_PATH=$prefix/vendors/edge_llm"
fi
