#!/usr/bin/env bash
# Run the Autobahn|Testsuite against kn_sock.
#   tests/conformance/run_autobahn.sh [quick|full|deflate] [roles...]
# quick: all but 9.* (performance), 12.* and 13.* (compression); deflate: only 12.* and 13.*.
# roles: async-server sync-server async-client sync-client (default: all four), and
#        uvloop-server uvloop-client (the asyncio layer on uvloop's event loop)
# Environment: WSTEST_DIR (where ../shared/tools/autobahn/setup.sh builds wstest; built if missing),
#              KN_SOCK_PURE=1 to test the pure twin, AUTOBAHN_OUT (reports folder).
# Exit status 1 if any case FAILED (or a role did not complete).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mode=${1:-quick}; shift || true
roles=${*:-async-server sync-server async-client sync-client}
shared=${KN_SOCK_SHARED:-$root/../shared}
W=${WSTEST_DIR:-$HOME/.cache/kn_sock/autobahn-wstest}
out=${AUTOBAHN_OUT:-$root/build/autobahn}
impl=$(python -c "import kn_sock._backend as b; print(b.IMPLEMENTATION)" 2>/dev/null || echo unknown)
mkdir -p "$out"
if [ ! -f "$shared/tools/autobahn/summarize.py" ]; then
  echo "error: the Autobahn tools are not in $shared/tools/autobahn (setup.sh, summarize.py):" >&2
  echo "  they come with the workspace, beside this repository; point KN_SOCK_SHARED at the folder holding tools/" >&2
  exit 2
fi
if [ ! -x "$W/venv/bin/wstest" ]; then
  echo "building wstest in $W"
  bash "$shared/tools/autobahn/setup.sh" "$W" > "$out/setup.log" 2>&1 || { tail -20 "$out/setup.log"; exit 1; }
fi
cases='["*"]'
if [ "$mode" = quick ]; then exclude='["9.*", "12.*", "13.*"]'; else exclude='[]'; fi
if [ "$mode" = deflate ]; then cases='["12.*", "13.*"]'; fi
status=0
for role in $roles; do
  agent="kn_sock-$role-$impl"
  dir="$out/$agent"; rm -rf "$dir"; mkdir -p "$dir"
  case $role in
    *-server)
      kind=${role%-server}
      python "$here/echo_server.py" "$kind" "$dir/port" > "$dir/server.log" 2>&1 &
      pid=$!
      for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.1; done
      port=$(cat "$dir/port" 2>/dev/null)
      cat > "$dir/spec.json" <<JSON
{"outdir": "$dir/reports", "servers": [{"agent": "$agent", "url": "ws://127.0.0.1:$port"}],
 "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
JSON
      (cd "$dir" && "$W/venv/bin/wstest" -m fuzzingclient -s spec.json > wstest.log 2>&1)
      kill $pid 2>/dev/null; wait $pid 2>/dev/null
      ;;
    *-client)
      kind=${role%-client}
      port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      cat > "$dir/spec.json" <<JSON
{"url": "ws://127.0.0.1:$port", "outdir": "$dir/reports", "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
JSON
      # exec: $! is then wstest itself, which the kill below stops (not just a subshell).
      (cd "$dir" && exec "$W/venv/bin/wstest" -m fuzzingserver -s spec.json -u 0 > wstest.log 2>&1) &
      wpid=$!
      for _ in $(seq 100); do python - "$port" <<'PY' && break
import socket, sys
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
        sleep 0.2; done
      timeout 3000 python "$here/client_driver.py" "$kind" "ws://127.0.0.1:$port" "$agent" > "$dir/client.log" 2>&1 || echo "client driver failed: $(tail -3 "$dir/client.log")"
      kill $wpid 2>/dev/null; wait $wpid 2>/dev/null
      ;;
  esac
  echo "== $agent ($mode)"
  if [ -f "$dir/reports/index.json" ]; then
    python "$shared/tools/autobahn/summarize.py" "$dir/reports/index.json" || status=1
  else
    echo "no report for $agent"; status=1
  fi
done
exit $status
