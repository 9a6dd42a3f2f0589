#!/bin/sh
# Browser end-to-end test of the Levee console: a real levee engine with the console on
# HTTPS, Postfix's smtp-sink as the downstream server, swaks as the sender, and Debian's
# chromium driven by playwright-core (never playwright's own browser download).
# Needs: chromium, swaks, postfix (smtp-sink), nodejs, npm. Saves docs/screenshots/*.png.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${LEVEE_BIN:-$repo/target/debug/levee}
if [ -z "${LEVEE_BIN:-}" ]; then (cd "$repo" && cargo build -q -p levee); fi
[ -d "$here/node_modules/playwright-core" ] || (cd "$here" && npm ci --no-audit --no-fund --silent)

work=$(mktemp -d /tmp/levee-console-e2e.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
smtp=$(port); console=$(port); sink=$(port)

mkdir -p "$work/sink" "$work/data"
chmod 711 "$work"; chmod 777 "$work/sink"
cat > "$work/levee.toml" <<CONF
# Levee console end-to-end test
hostname = "mx.example.test"
data_dir = "$work/data"
[smtp]
listen = ["127.0.0.1:$smtp"]
tls = false
[delivery]
retry_first_secs = 1
[console]
listen = ["127.0.0.1:$console"]
[policy]
# GTUBE quarantines here instead of being refused, so the test can release it.
reject_at = 100.0
weights = { GTUBE = 10.0 }
[[domain]]
name = "example.test"
downstream = "127.0.0.1:$sink"
tls = "none"
CONF

if [ "$(id -u)" = 0 ]; then sinkuser="-u nobody"; else sinkuser=""; fi
smtp-sink $sinkuser -d "$work/sink/%H%M%S." "127.0.0.1:$sink" 100 &
pids="$pids $!"
"$bin" run --config "$work/levee.toml" 2> "$work/levee.log" &
pids="$pids $!"

i=0
until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$console),1)" 2>/dev/null; do
    i=$((i+1)); [ $i -lt 100 ] || { echo "console did not start"; cat "$work/levee.log"; exit 1; }
    sleep 0.1
done

# The first-run setup code, as the appliance's screen shows it (written as the console
# starts serving, just after its port is bound).
i=0
until [ -s "$work/data/setup-code" ]; do
    i=$((i+1)); [ $i -lt 100 ] || { echo "no setup code written"; cat "$work/levee.log"; exit 1; }
    sleep 0.1
done
setup_code=$(cat "$work/data/setup-code")
SETUP_CODE=$setup_code BASE="https://127.0.0.1:$console" SMTP_PORT=$smtp SINK_DIR="$work/sink" WORK="$work" \
SHOTS="$repo/docs/screenshots" node "$here/e2e.mjs" || { echo "--- levee log"; tail -50 "$work/levee.log"; exit 1; }
