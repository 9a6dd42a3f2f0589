#!/usr/bin/env bash
# Relay throughput benchmark: smtp-source -> {nothing, Postfix, Levee} -> smtp-sink on loopback.
# Every row uses the same generator, message set and concurrency, and is timed from the start of
# the injection until the sink has counted all N messages (relays deliver asynchronously).
# See README.md in this directory.
set -euo pipefail

N=${N:-2000}                              # messages per row
CONC=${CONC:-20}                          # parallel SMTP sessions of smtp-source
SIZE=${SIZE:-4096}                        # payload bytes per message (smtp-source -l)
DELIVERY_TIMEOUT=${DELIVERY_TIMEOUT:-60}  # seconds to wait for the sink to count N, per row
SETTLE_MS=${SETTLE_MS:-500}               # after N arrived: wait this long, then recount (dups)
LEVEE_RUST_LOG=${LEVEE_RUST_LOG:-}        # optional RUST_LOG for levee (empty: its default)
KEEP=${KEEP:-0}                           # 1: keep the temp dir (logs, configs) for inspection
CORPUS=${CORPUS:-}                        # labelled corpus (train/spam, train/ham) for Levee's model

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[[ -z $CORPUS && -d $REPO/../shared/corpus/train ]] && CORPUS=$REPO/../shared/corpus
LEVEE_BIN=${LEVEE_BIN:-$REPO/target/release/levee}

for tool in smtp-source smtp-sink postfix postconf ss awk; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool (Debian: postfix, iproute2)" >&2; exit 2; }
done
[[ $N =~ ^[1-9][0-9]*$ && $CONC =~ ^[1-9][0-9]*$ && $SIZE =~ ^[0-9]+$ ]] ||
    { echo "N, CONC must be positive integers, SIZE a non-negative integer" >&2; exit 2; }

WORK=$(mktemp -d /tmp/levee-relay-bench.XXXXXX)
# Postfix daemons run as user postfix and must traverse into the queue directory.
chmod 755 "$WORK"

SINK_PID=""
SOURCE_PID=""
LEVEE_PID=""
PF_CONF=""

stop_pid() { # pid: TERM, wait up to 5 s, then KILL; only processes this script started
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_postfix() {
    [[ -n $PF_CONF ]] || return 0
    local pidfile=$WORK/postfix/queue/pid/master.pid master=""
    [[ -s $pidfile ]] && master=$(tr -dc 0-9 <"$pidfile")
    timeout 20 postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
    # The master stops its children; if it hangs, kill exactly that master process.
    if [[ -n $master ]] && kill -0 "$master" 2>/dev/null; then
        sleep 2
        kill -KILL "$master" 2>/dev/null || true
    fi
    PF_CONF=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$SOURCE_PID"
    stop_pid "$LEVEE_PID"
    stop_postfix
    stop_pid "$SINK_PID"
    if [[ $KEEP == 1 ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }

free_port() { # a currently unused loopback TCP port
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Htln "sport = :$p") ]] && { echo "$p"; return; }
    done
}

wait_port() { # port timeout_s: until something accepts on 127.0.0.1:port
    local port=$1 deadline=$(($(date +%s) + $2))
    while (($(date +%s) < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# --- sink ---------------------------------------------------------------------------------
SINK_OUT=""
start_sink() { # name -> SINK_PORT, SINK_PID; -c prints "... mesg=K" counters separated by CR
    SINK_PORT=$(free_port)
    SINK_OUT=$WORK/sink-$1.out
    local asuser=()
    ((EUID == 0)) && asuser=(-u nobody)
    smtp-sink "${asuser[@]}" -c -m 512 "127.0.0.1:$SINK_PORT" 1024 >"$SINK_OUT" 2>&1 &
    SINK_PID=$!
    wait_port "$SINK_PORT" 10 || { echo "smtp-sink did not start" >&2; cat "$SINK_OUT" >&2; exit 1; }
}
sink_count() {
    local n
    n=$(tr '\r' '\n' <"$SINK_OUT" | sed -n 's/.*mesg=\([0-9][0-9]*\).*/\1/p' | tail -n 1)
    echo "${n:-0}"
}
stop_sink() { stop_pid "$SINK_PID"; SINK_PID=""; }

# --- one measurement ----------------------------------------------------------------------
# measure name port: inject N messages into port, wait until the sink counted N.
# Sets R_STATUS (ok|FAILED: why), R_SECS, R_RATE, R_SENT, R_GOT.
measure() {
    local port=$2 src=$WORK/source-$1.out t0 t1 deadline src_rc=0
    t0=$(now_ns)
    # In the background plus wait, so that a signal reaches the trap at once.
    timeout $((DELIVERY_TIMEOUT + 30)) smtp-source -s "$CONC" -m "$N" -l "$SIZE" -c \
        -f from@example.test -t to@example.test "127.0.0.1:$port" >"$src" 2>&1 &
    SOURCE_PID=$!
    wait "$SOURCE_PID" || src_rc=$?
    SOURCE_PID=""
    deadline=$((t0 + DELIVERY_TIMEOUT * 1000000000))
    R_GOT=$(sink_count)
    while ((R_GOT < N)) && (($(now_ns) < deadline)); do
        sleep 0.02
        R_GOT=$(sink_count)
    done
    t1=$(now_ns)
    # The timing ends at the N-th arrival; the recount afterwards catches duplicates.
    sleep "$(awk -v ms="$SETTLE_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
    R_GOT=$(sink_count)
    R_SENT=$(tr '\r' '\n' <"$src" | grep -E '^[0-9]+$' | tail -n 1 || true)
    R_SENT=${R_SENT:-0}
    R_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    R_RATE=$(awk -v n="$R_GOT" -v s="$R_SECS" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }')
    if ((src_rc != 0)); then
        R_STATUS="FAILED: smtp-source exit $src_rc: $(tr '\r' '\n' <"$src" | grep -m 1 'smtp-source' |
            cut -c1-120 || true)"
    elif ((R_GOT < N)); then
        R_STATUS="FAILED: sink got $R_GOT of $N within ${DELIVERY_TIMEOUT}s"
    elif ((R_GOT > N)); then
        R_STATUS="FAILED: sink got $R_GOT of $N (duplicates)"
    else
        R_STATUS=ok
    fi
}

declare -A RATE STATUS SECS GOT SENT
record() { RATE[$1]=$R_RATE; STATUS[$1]=$R_STATUS; SECS[$1]=$R_SECS; GOT[$1]=$R_GOT; SENT[$1]=$R_SENT; }
skip() { RATE[$1]=-; STATUS[$1]="SKIPPED: $2"; SECS[$1]=-; GOT[$1]=-; SENT[$1]=-; }
fail() { RATE[$1]=-; STATUS[$1]="FAILED: $2"; SECS[$1]=-; GOT[$1]=-; SENT[$1]=-; }

# --- 1. ceiling: source -> sink -------------------------------------------------------------
start_sink direct
measure direct "$SINK_PORT"
record direct
stop_sink

# --- 2. source -> Postfix -> sink -----------------------------------------------------------
setup_postfix() { # sink_port -> PF_PORT; a private instance, never the system one in /etc/postfix
    local sink_port=$1 d=$WORK/postfix
    PF_PORT=$(free_port)
    mkdir -p "$d/conf" "$d/queue" "$d/data"
    chown postfix "$d/data"
    cat >"$d/conf/main.cf" <<EOF
# Private benchmark instance; Postfix defaults apart from what routing needs.
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = $d
maillog_file = $d/postfix.log
myhostname = relay-bench.example.test
mydomain = example.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relay_domains = example.test
relay_transport = relay:[127.0.0.1]:$sink_port
default_transport = error:benchmark instance sends nowhere else
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
EOF
    # No chroot (column 5 = n): the queue lives in a temp dir without the chroot's files.
    cat >"$d/conf/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
    PF_CONF=$d/conf
    if ! timeout 30 postfix -c "$PF_CONF" check >/dev/null 2>&1 ||
        ! timeout 30 postfix -c "$PF_CONF" start >/dev/null 2>&1 ||
        ! wait_port "$PF_PORT" 20; then
        echo "private postfix instance failed to start; its log:" >&2
        tail -n 20 "$d/postfix.log" >&2 2>/dev/null || true
        return 1
    fi
}

if ((EUID != 0)); then
    skip postfix "needs root to start a private Postfix instance"
else
    start_sink postfix
    if setup_postfix "$SINK_PORT"; then
        measure postfix "$PF_PORT"
        record postfix
    else
        fail postfix "private instance did not start"
    fi
    stop_postfix
    stop_sink
fi

# --- 3. source -> Levee -> sink -------------------------------------------------------------
LEVEE_HWM=-
LEVEE_MODEL="untrained (no corpus: set CORPUS=DIR with train/spam and train/ham)"
setup_levee() { # sink_port -> LEVEE_PORT, LEVEE_PID
    local sink_port=$1 d=$WORK/levee
    LEVEE_PORT=$(free_port)
    mkdir -p "$d/data"
    # The bench's own concurrency must not hit the per-IP limit; fsync is always on (no knob).
    cat >"$d/levee.toml" <<EOF
hostname = "mx.example.test"
data_dir = "$d/data"
[smtp]
listen = ["127.0.0.1:$LEVEE_PORT"]
tls = false
max_connections = $((CONC * 2 + 100))
max_connections_per_ip = $((CONC * 2 + 10))
[[domain]]
name = "example.test"
downstream = "127.0.0.1:$sink_port"
tls = "none"
# smtp-source's filler ("La La La", no Date or Message-ID) scores as spam with a trained model;
# thresholds out of reach keep every message classified and still delivered for the count.
[policy]
tag_at = 900.0
quarantine_at = 950.0
reject_at = 1000.0
EOF
    # Every local check on: the content rules always run; the model is trained first when a
    # corpus is at hand, so each message is really classified (an untrained model only tokenizes).
    if [[ -n $CORPUS ]]; then
        "$LEVEE_BIN" train --data "$d/data" --spam "$CORPUS/train/spam" --ham "$CORPUS/train/ham" \
            >"$d/train.log" 2>&1 || { echo "levee train failed; its log:" >&2; cat "$d/train.log" >&2; return 1; }
        LEVEE_MODEL="trained on $CORPUS/train"
    fi
    local env=()
    [[ -n $LEVEE_RUST_LOG ]] && env=(RUST_LOG="$LEVEE_RUST_LOG")
    env "${env[@]}" "$LEVEE_BIN" run --config "$d/levee.toml" >"$d/levee.log" 2>&1 &
    LEVEE_PID=$!
    if ! wait_port "$LEVEE_PORT" 30 || ! kill -0 "$LEVEE_PID" 2>/dev/null; then
        echo "levee did not start listening on 127.0.0.1:$LEVEE_PORT; its log:" >&2
        tail -n 20 "$d/levee.log" >&2 || true
        return 1
    fi
}

if [[ ! -x $LEVEE_BIN ]]; then
    skip levee "no binary at $LEVEE_BIN (cargo build --release -p levee)"
else
    start_sink levee
    if setup_levee "$SINK_PORT"; then
        measure levee "$LEVEE_PORT"
        record levee
        LEVEE_HWM=$(awk '/^VmHWM:/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$LEVEE_PID/status" 2>/dev/null || true)
        LEVEE_HWM=${LEVEE_HWM:--}
        if [[ ${STATUS[levee]} != ok ]]; then
            echo "levee log (last 15 lines):" >&2
            tail -n 15 "$WORK/levee/levee.log" >&2 || true
        fi
    else
        fail levee "did not start (see its log above)"
    fi
    stop_pid "$LEVEE_PID"
    LEVEE_PID=""
    stop_sink
fi

# --- report ---------------------------------------------------------------------------------
ratio() { # a b -> a/b formatted, or - when either is not a successful number
    awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'
}
ok_rate() { [[ ${STATUS[$1]} == ok ]] && echo "${RATE[$1]}" || echo -; }

echo
echo "machine:    $(nproc) cpus, $(uname -srm), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "parameters: N=$N messages, CONC=$CONC sessions, SIZE=$SIZE payload bytes, one connection per message"
echo "            smtp-source -s $CONC -m $N -l $SIZE -c -f from@example.test -t to@example.test"
echo "postfix:    $(postconf -d -h mail_version 2>/dev/null), private instance, defaults + relay to sink"
echo "levee:      $LEVEE_BIN"
echo "timing:     start of injection until the sink has counted all N messages"
echo
printf '%-24s %8s %8s %9s %10s  %s\n' path sent arrived seconds "msgs/s" status
for row in direct postfix levee; do
    case $row in
    direct) label="source->sink (ceiling)" ;;
    postfix) label="source->postfix->sink" ;;
    levee) label="source->levee->sink" ;;
    esac
    rate=${RATE[$row]}
    [[ ${STATUS[$row]} == ok ]] || rate=FAILED
    [[ ${STATUS[$row]} == SKIPPED* ]] && rate=-
    printf '%-24s %8s %8s %9s %10s  %s\n' "$label" "${SENT[$row]}" "${GOT[$row]}" "${SECS[$row]}" "$rate" "${STATUS[$row]}"
done
echo
echo "postfix / ceiling: $(ratio "$(ok_rate postfix)" "$(ok_rate direct)")"
echo "levee / ceiling:   $(ratio "$(ok_rate levee)" "$(ok_rate direct)")"
echo "levee / postfix:   $(ratio "$(ok_rate levee)" "$(ok_rate postfix)")"
echo "levee peak RSS (VmHWM): $LEVEE_HWM"
echo "levee content model: $LEVEE_MODEL"

# Exit non-zero when a row that ran failed, so CI can tell.
for row in direct postfix levee; do
    [[ ${STATUS[$row]} == ok || ${STATUS[$row]} == SKIPPED* ]] || exit 1
done
