#!/usr/bin/env bash
# Run kn_sock's atheris fuzz targets, each for SECONDS (default 60), one after another.
#
#   tests/fuzz/run_fuzz.sh [SECONDS] [TARGET...]     TARGET: frame_parser handshake deflate
#
# Corpora and crash artifacts go to $KN_SOCK_FUZZ_DIR (default /tmp/kn_sock-fuzz/<target>/),
# seeded from each target's seeds(). A crash leaves crash-* files there and makes the script
# exit 1: turn each into a case in tests/fuzz/test_fuzz_regressions.py. Installs atheris
# with pip when it is missing.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(frame_parser handshake deflate)
OUT="${KN_SOCK_FUZZ_DIR:-/tmp/kn_sock-fuzz}"
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c "import atheris" 2>/dev/null; then
    "$PYTHON" -m pip install -q atheris
fi

status=0
for target in "${TARGETS[@]}"; do
    dir="$OUT/$target"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    "$PYTHON" - "$target" "$dir/corpus" <<'PY'
import hashlib, importlib, pathlib, sys
module = importlib.import_module("fuzz_" + sys.argv[1])
for seed in module.seeds():
    (pathlib.Path(sys.argv[2]) / ("seed-" + hashlib.sha1(seed).hexdigest()[:16])).write_bytes(seed)
PY
    echo "== fuzz_$target: ${SECONDS_EACH}s, corpus $dir/corpus"
    if ! "$PYTHON" "fuzz_$target.py" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -max_len=16384 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "$dir/corpus" \
        >"$dir/log.txt" 2>&1; then
        echo "!! fuzz_$target found a crash: $(ls "$dir/artifacts" | tr '\n' ' ')"
        tail -n 40 "$dir/log.txt"
        status=1
    fi
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|#[0-9]+\s+DONE" "$dir/log.txt" || true
done
exit $status
