#!/bin/bash
# ascend-smoke.sh: the first run of the Ascend path on a real Orange Pi AI Pro (Ascend 310B). The path
# has only run against test doubles so far; this script runs it end to end on the board and packs what
# happened into one archive to send back (issue 21).
#
#   scripts/ascend-smoke.sh [--stories DIR [--calib FILE] | --stories-bundle DIR] [--smollm2-bundle DIR]
#       [--soc 20T|8T] [--out DIR] [--python PY] [--skip-acl] [--step-timeout S] [--max-new-tokens N]
#       [--prompt-tokens P] [--new-tokens N] [--build-args "HOST BUILD OPTIONS"]
#
# Run it on the board, in this checkout, with the host venv (.venv, else --python; building and compiling
# need the host package; without torch, build the bundles on the workstation and pass --stories-bundle).
# For each bundle (stories260K from --stories, default ../shared/models/stories260K, built here with
# --target ascend unless --stories-bundle gives one; a SmolLM2 bundle built with --target ascend when
# --smollm2-bundle gives one; a given bundle is copied first, so yours stays as it was):
# `python -m host compile --runner local` to model.om with the board's ATC, `python -m board verify`, greedy
# `python -m board generate --json` on --backend acl and on --backend onnxruntime (the token ids are
# compared), and `python -m board bench` on both. Before that it records `npu-smi info`, the CANN version
# files and the board's Ascend facts; after, the CANN logs written during the run. Every step runs even
# when an earlier one failed; each is recorded in summary.json (command, exit code, seconds).
#
# Output: DIR (default ./ascend-smoke-YYYYmmdd-HHMMSS) and DIR.tar.gz, the archive to send back.
# Exit: 0 all steps ok, 1 some failed, 2 not on a board with an NPU and CANN (or a bad option).
set -uo pipefail # no -e: a failed step is recorded and the next one still runs

REPO=$(cd "$(dirname "$0")/.." && pwd)
STORIES=$REPO/../shared/models/stories260K
CALIB=$REPO/../shared/data/tinystories-valid-part1.txt
STORIES_BUNDLE=""
SMOLLM2_BUNDLE=""
SOC=""
OUT=./ascend-smoke-$(date +%Y%m%d-%H%M%S)
PY=""
SKIP_ACL=0
STEP_TIMEOUT=3600 # ATC on one core compiles a 135M model for minutes; a hung NPU call must not block forever
PROMPT="Once upon a time"
MAX_NEW_TOKENS=32
PROMPT_TOKENS=64
NEW_TOKENS=64
BUILD_ARGS="" # extra `python -m host build` options (the tests pass smaller calibration settings)

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "ascend-smoke: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
    --stories) STORIES=${2:?}; shift 2 ;;
    --stories-bundle) STORIES_BUNDLE=${2:?}; shift 2 ;;
    --calib) CALIB=${2:?}; shift 2 ;;
    --smollm2-bundle) SMOLLM2_BUNDLE=${2:?}; shift 2 ;;
    --soc) SOC=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --python) PY=${2:?}; shift 2 ;;
    --skip-acl) SKIP_ACL=1; shift ;;
    --step-timeout) STEP_TIMEOUT=${2:?}; shift 2 ;;
    --max-new-tokens) MAX_NEW_TOKENS=${2:?}; shift 2 ;;
    --prompt-tokens) PROMPT_TOKENS=${2:?}; shift 2 ;;
    --new-tokens) NEW_TOKENS=${2:?}; shift 2 ;;
    --build-args) BUILD_ARGS=${2?}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
done

# --- is this a board? ------------------------------------------------------------------------
# npu-smi comes with the NPU driver, set_env.sh with the CANN toolkit (ATC, pyACL); without both nothing
# below can work, so say so in one line instead of a page of failed steps.
missing=()
command -v npu-smi >/dev/null 2>&1 || missing+=("npu-smi not found")
SET_ENV=""
if [ -z "${ASCEND_TOOLKIT_HOME:-}" ] || [ ! -d "$ASCEND_TOOLKIT_HOME" ]; then # not sourced yet
    for f in /usr/local/Ascend/ascend-toolkit/set_env.sh "$HOME/Ascend/ascend-toolkit/set_env.sh"; do
        if [ -f "$f" ]; then SET_ENV=$f; break; fi
    done
    [ -n "$SET_ENV" ] || missing+=("no CANN set_env.sh under /usr/local/Ascend/ascend-toolkit")
fi
if [ ${#missing[@]} -gt 0 ]; then
    reasons=$(printf '%s, ' "${missing[@]}")
    die "no NPU here (${reasons%, }); run this on the Orange Pi AI Pro"
fi
if [ -n "$SET_ENV" ]; then
    set +u # CANN's set_env.sh reads variables that may be unset
    # shellcheck disable=SC1090
    . "$SET_ENV"
    set -u
fi

if [ -z "$PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/bundles # compiled bundles: large, so left out of the archive
mkdir -p "$WORK" "$OUT/ascend-log"
cd "$REPO" || die "cannot cd to $REPO"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} # `python -m host|board` from this checkout
# ATC on the board runs out of memory compiling kernels in parallel (host/ascend/atc.py BOARD_ATC_ENV)
export MAX_COMPILE_CORE_NUMBER=1 TE_PARALLEL_COMPILER=1
# CANN writes its logs under $ASCEND_PROCESS_LOG_PATH, else $ASCEND_WORK_PATH, else ~/ascend/log (EP form;
# https://hiascend.com/document/detail/zh/canncommercial/800/apiref/envvar/envref_07_0120.html). The 310B is
# the RC form, whose application logs go to /var/log/npu/slog/{debug,run}/device-app-<pid>/
# (https://www.hiascend.com/document/detail/zh/canncommercial/800/developmentguide/maintenref/logreference/logreference_0003.html):
# point the variable into the output directory, and collect from the other places at the end.
LOG_DIRS=("${ASCEND_PROCESS_LOG_PATH:-}" "${ASCEND_WORK_PATH:+$ASCEND_WORK_PATH/log}" "$HOME/ascend/log" /var/log/npu/slog)
export ASCEND_PROCESS_LOG_PATH=${ASCEND_PROCESS_LOG_PATH:-$OUT/ascend-log/process}
STARTED=$(date -Iseconds)
touch "$OUT/.started" # log files newer than this were written during the run

# --- recording ---------------------------------------------------------------------------------
STEPS=$OUT/steps.jsonl
: >"$STEPS"
OK=0 FAILED=0 SKIPPED=0

json_str() { # a bash string as a JSON string
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}; s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

record() { # record NAME EXIT SECONDS COMMAND [EXTRA_JSON_FIELDS]: one line of steps.jsonl
    local files=""
    [ -f "$OUT/$1.txt" ] && files=", \"stdout\": $(json_str "$1.txt"), \"stderr\": $(json_str "$1.err")"
    printf '{"step": %s, "command": %s, "exit": %s, "seconds": %s%s%s}\n' \
        "$(json_str "$1")" "$(json_str "$4")" "$2" "$3" "$files" "${5:+, $5}" >>"$STEPS"
}

# step NAME CMD...: run CMD (stdout NAME.txt, stderr NAME.err), record it, return its exit code
step() {
    local name=$1 t0 t1 rc cmd
    shift
    echo "ascend-smoke: $name" >&2
    t0=$(date +%s.%N)
    if declare -F "$1" >/dev/null; then # a function of this script (short, local work): no timeout
        "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err" </dev/null
    else
        timeout --kill-after=30 "$STEP_TIMEOUT" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err" </dev/null
    fi
    rc=$?
    t1=$(date +%s.%N)
    cmd=$(printf '%q ' "$@") # copy-pasteable
    record "$name" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" "${cmd% }" "${STEP_EXTRA:-}"
    if [ "$rc" = 0 ]; then OK=$((OK + 1)); else FAILED=$((FAILED + 1)); fi
    return "$rc"
}

skip() { # skip NAME REASON: record a step that was not run, and why
    echo "ascend-smoke: $1 skipped: $2" >&2
    record "$1" null 0 "" "\"skipped\": $(json_str "$2")"
    SKIPPED=$((SKIPPED + 1))
}

# --- what is on this board -----------------------------------------------------------------------
system_info() {
    uname -a
    cat /etc/os-release 2>/dev/null
    "$PY" --version
    "$PY" -m pip list --format=freeze 2>/dev/null | grep -i -E '^(numpy|onnx|onnxruntime|tokenizers|torch)=='
    git -C "$REPO" describe --always --dirty 2>/dev/null
}

cann_versions() { # the files board/ascend.py toolkit_version() reads, whole, with their paths; 1 if none
    local found=1 home f
    for home in "${ASCEND_TOOLKIT_HOME:-}" /usr/local/Ascend/ascend-toolkit/latest "$HOME/Ascend/ascend-toolkit/latest"; do
        [ -d "$home" ] || continue # an empty name is no directory either
        for f in "$home"/*/ascend_toolkit_install.info "$home"/version.cfg "$home"/*/version.cfg; do
            [ -f "$f" ] || continue
            echo "== $f"; cat "$f"; found=0
        done
    done
    return "$found"
}

detect_soc() { # the chip pyACL or npu-smi names; fails when it has no variant digit (newer npu-smi)
    "$PY" -c 'from board.ascend import SOCS, detect_chip, soc_hint
found = detect_chip()
print(found["chip"] or "")
if found["chip"] not in SOCS:
    raise SystemExit(f"no 310B variant in {found}: pass --soc 20T or 8T ({soc_hint()})")'
}

step system system_info
step npu-smi npu-smi info
step cann-version cann_versions
step ascend-facts "$PY" -m board.ascend # chip, ATC plugin, CANN version, as `fab doctor` sees them
if [ -z "$SOC" ]; then
    step soc detect_soc && SOC=$(tail -n 1 "$OUT/soc.txt")
fi

# --- one bundle: compile, verify, generate on both backends, bench ----------------------------------
compare_ids() { # compare_ids ACL_JSON ORT_JSON: exit 0 when the greedy token ids are equal, 1 when not, 2 unreadable
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
try:
    acl, ort = (json.loads(open(p).read().strip().splitlines()[-1])["tokens"] for p in sys.argv[1:3])
except Exception as e:  # a generate step that failed left no JSON
    print(json.dumps({"equal": None, "error": f"{type(e).__name__}: {e}"}))
    sys.exit(2)
prefix = next((i for i, (a, b) in enumerate(zip(acl, ort)) if a != b), min(len(acl), len(ort)))
print(json.dumps({"equal": acl == ort, "common_prefix": prefix, "acl": acl, "onnxruntime": ort}))
sys.exit(0 if acl == ort else 1)
EOF
}

run_bundle() { # run_bundle NAME DIR
    local name=$1 dir=$2 backend rc
    if [ -n "$SOC" ]; then
        step "$name-compile" "$PY" -m host compile --bundle "$dir" --soc "$SOC" --runner local --json
    else
        skip "$name-compile" "the chip is not known: pass --soc 20T or 8T (see soc.err)"
    fi
    cp "$dir/manifest.json" "$OUT/$name-manifest.json" 2>/dev/null # graph.om_soc, om_cann, checksums
    step "$name-verify" "$PY" -m board verify --bundle "$dir"
    for backend in acl onnxruntime; do
        if [ "$backend" = acl ] && [ "$SKIP_ACL" = 1 ]; then
            skip "$name-generate-acl" "--skip-acl"
            continue
        fi
        step "$name-generate-$backend" "$PY" -m board generate --bundle "$dir" --backend "$backend" --greedy --json \
            --prompt "$PROMPT" --max-new-tokens "$MAX_NEW_TOKENS"
    done
    if [ "$SKIP_ACL" = 1 ]; then
        skip "$name-compare-ids" "--skip-acl"
    else
        # the NPU computes in fp16 where x86/ARM onnxruntime often uses fp32, so ids may part late in the text:
        # compare-ids.txt says where (common_prefix)
        compare_ids "$OUT/$name-generate-acl.txt" "$OUT/$name-generate-onnxruntime.txt" >/dev/null 2>&1
        rc=$?
        case $rc in 0) equal=true ;; 1) equal=false ;; *) equal=null ;; esac
        STEP_EXTRA="\"ids_equal\": $equal" step "$name-compare-ids" compare_ids \
            "$OUT/$name-generate-acl.txt" "$OUT/$name-generate-onnxruntime.txt"
    fi
    for backend in acl onnxruntime; do
        if [ "$backend" = acl ] && [ "$SKIP_ACL" = 1 ]; then
            skip "$name-bench-acl" "--skip-acl"
            continue
        fi
        step "$name-bench-$backend" "$PY" -m board bench --bundle "$dir" --backend "$backend" \
            --prompt-tokens "$PROMPT_TOKENS" --new-tokens "$NEW_TOKENS" --json
    done
}

if [ -n "$STORIES_BUNDLE" ]; then
    step stories-copy cp -a "$STORIES_BUNDLE" "$WORK/stories" # compile writes into the bundle: not into yours
else
    # shellcheck disable=SC2086 # BUILD_ARGS is a list of options
    step stories-build "$PY" -m host build --model "$STORIES/stories260K.bin" --tokenizer "$STORIES/tok512.bin" \
        --calib "$CALIB" --quant w8a8 --target ascend --kv-len 128 --out "$WORK/stories" $BUILD_ARGS
fi
run_bundle stories "$WORK/stories"
if [ -n "$SMOLLM2_BUNDLE" ]; then
    step smollm2-copy cp -a "$SMOLLM2_BUNDLE" "$WORK/smollm2"
    run_bundle smollm2 "$WORK/smollm2"
fi

# --- CANN's logs from this run, then the summary and the archive -----------------------------------
collect_logs() { # files written since the start under the places CANN logs to, at most 20 MB each
    local dir
    for dir in "${LOG_DIRS[@]}"; do
        [ -d "$dir" ] || continue
        find "$dir" -type f -newer "$OUT/.started" -size -20M -readable -print0 2>/dev/null |
            xargs -0 -r cp --parents -t "$OUT/ascend-log" 2>/dev/null
    done
    find "$OUT/ascend-log" -type f | sed "s|^$OUT/||"
}
step ascend-log collect_logs

{
    printf '{"tool": "scripts/ascend-smoke.sh", "started": %s, "finished": %s, "machine": %s, "soc": %s, ' \
        "$(json_str "$STARTED")" "$(json_str "$(date -Iseconds)")" "$(json_str "$(uname -m)")" "$(json_str "$SOC")"
    printf '"commit": %s, "ok": %d, "failed": %d, "skipped": %d,\n "steps": [\n' \
        "$(json_str "$(git -C "$REPO" describe --always --dirty 2>/dev/null)")" "$OK" "$FAILED" "$SKIPPED"
    sed '$!s/$/,/; s/^/  /' "$STEPS"
    printf ' ]}\n'
} >"$OUT/summary.json"
rm -f "$OUT/.started" "$STEPS"
tar -czf "$OUT.tar.gz" -C "$(dirname "$OUT")" --exclude "$(basename "$OUT")/bundles" "$(basename "$OUT")" ||
    echo "ascend-smoke: could not write $OUT.tar.gz" >&2

echo "ascend-smoke: $OK ok, $FAILED failed, $SKIPPED skipped; $OUT/summary.json; send back $OUT.tar.gz"
[ "$FAILED" = 0 ]
