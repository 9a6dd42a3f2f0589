#!/usr/bin/env bash
# Accuracy benchmark: Levee vs SpamAssassin vs rspamd on the same labelled split.
#
# Each tool learns Bayes from train/ only and classifies dev/, with every network test off
# (no DNSBL/URIBL, no Razor/Pyzor, no fuzzy, DNS pointed at a dead port). Caught = spam the tool
# would hold (Levee: quarantine or worse; SpamAssassin: score >= 5; rspamd: "add header",
# "rewrite subject" or "reject"); FP = ham held the same way. Printed per source and pooled.
#
# This is a benchmark, not a test. It installs spamassassin, rspamd and redis-server if missing.
#   bench/accuracy/run.sh [CORPUS_DIR]        (default: ../shared/corpus beside the repo)
#   SKIP_SA=1 / SKIP_RSPAMD=1 skip a tool.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CORPUS=$(cd "${1:-$REPO/../shared/corpus}" && pwd)
[ -f "$CORPUS/train.tsv" ] && [ -f "$CORPUS/dev.tsv" ] || { echo "no corpus at $CORPUS" >&2; exit 1; }
W=$(mktemp -d /tmp/levee-accuracy.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$W/sa/spamd.pid" ] && kill "$(cat "$W/sa/spamd.pid")" 2>/dev/null || true
    [ -f "$W/rspamd/run/rspamd.pid" ] && kill "$(cat "$W/rspamd/run/rspamd.pid")" 2>/dev/null || true
    sleep 1
    if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT

need=()
command -v spamd >/dev/null || need+=(spamassassin spamc)
command -v rspamd >/dev/null || need+=(rspamd)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >&2
fi

# Lists of absolute paths per split and label; results are "label source held score".
for split in train dev; do
    awk -F'\t' -v base="$CORPUS" 'NR>1 {print base"/"$1"\t"$2"\t"$3}' "$CORPUS/$split.tsv" >"$W/$split.lst"
    for label in spam ham; do
        awk -F'\t' -v l=$label '$2==l {print $1}' "$W/$split.lst" >"$W/$split.$label"
    done
done
echo "train: $(wc -l <"$W/train.spam") spam, $(wc -l <"$W/train.ham") ham; dev: $(wc -l <"$W/dev.spam") spam, $(wc -l <"$W/dev.ham") ham" >&2

# --- Levee ---------------------------------------------------------------------------------
echo "== levee: build, train, classify" >&2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-bench}
(cd "$REPO" && cargo build --release -q -p levee-filter --example eval)
"$CARGO_TARGET_DIR/release/examples/eval" "$CORPUS/train.tsv" "$CORPUS/dev.tsv" --dump \
    >"$W/levee.report" 2>"$W/levee.dump"
# dump lines: KIND score source path summary; KIND is spam/MISS (spam) or ham/FP (ham).
awk '$1=="spam"{print "spam",$3,1,$2} $1=="MISS"{print "spam",$3,0,$2}
     $1=="ham"{print "ham",$3,0,$2} $1=="FP"{print "ham",$3,1,$2}' "$W/levee.dump" >"$W/levee.res"
grep "time per message" "$W/levee.report" >&2 || true

# --- SpamAssassin ---------------------------------------------------------------------------
if [ -z "${SKIP_SA:-}" ]; then
    echo "== spamassassin: sa-learn (local only), spamd on loopback" >&2
    mkdir -p "$W/sa/bayes" "$W/sa/home"
    cat >"$W/sa/local.cf" <<EOF
use_bayes 1
bayes_auto_learn 0
bayes_path $W/sa/bayes/bayes
bayes_file_mode 0777
skip_rbl_checks 1
use_razor2 0
use_pyzor 0
dns_available no
EOF
    # The .pre files load the plugins (Bayes among them); they live in the site config dir.
    cp /etc/spamassassin/*.pre "$W/sa/"
    : >"$W/sa/user_prefs"
    SA_CONF=(--siteconfigpath="$W/sa" -p "$W/sa/user_prefs")
    sa-learn -L "${SA_CONF[@]}" --spam -f "$W/train.spam" >&2
    sa-learn -L "${SA_CONF[@]}" --ham -f "$W/train.ham" >&2
    sa-learn -L "${SA_CONF[@]}" --dump magic | grep -E "nspam|nham" >&2
    chmod -R a+rwX "$W/sa"
    SA_PORT=17830
    spamd -L -x -u nobody -H "$W/sa/home" --siteconfigpath="$W/sa" -i 127.0.0.1 -A 127.0.0.1 \
        -p $SA_PORT -m 2 --min-spare=2 --pidfile="$W/sa/spamd.pid" -s "$W/sa/spamd.log" -d
    for _ in $(seq 60); do spamc -d 127.0.0.1 -p $SA_PORT -K >/dev/null 2>&1 && break; sleep 1; done
    # One spamc per message, two at a time (spamd runs two children).
    export SA_PORT
    awk -F'\t' '{print $2"\t"$3"\t"$1}' "$W/dev.lst" | xargs -d '\n' -P 2 -n 1 sh -c '
        label=$(printf "%s" "$1" | cut -f1); source=$(printf "%s" "$1" | cut -f2); f=$(printf "%s" "$1" | cut -f3)
        out=$(spamc -d 127.0.0.1 -p "$SA_PORT" -c -x <"$f"); score=${out%/*}
        held=$(awk -v s="$score" "BEGIN{print (s>=5.0)?1:0}")
        echo "$label $source $held $score"' _ >"$W/sa.res"
fi

# --- rspamd ---------------------------------------------------------------------------------
if [ -z "${SKIP_RSPAMD:-}" ]; then
    echo "== rspamd: redis + rspamd on loopback, network modules off" >&2
    R="$W/rspamd"
    mkdir -p "$R/conf/local.d" "$R/conf/override.d" "$R/db" "$R/run" "$R/log" "$R/redis"
    REDIS_PORT=17831 NORMAL_PORT=17832 CONTROLLER_PORT=17833 PROXY_PORT=17834
    redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --dir "$R/redis" \
        >"$R/log/redis.log" 2>&1 &
    PIDS+=($!)
    L="$R/conf/local.d" O="$R/conf/override.d"
    echo "servers = \"127.0.0.1:$REDIS_PORT\";" >"$L/redis.conf"
    # Learn every training message, as sa-learn and Levee do (the stock condition skips
    # messages Bayes already classifies confidently, which depends on the learning order).
    printf '%s\n' 'autolearn = false;' \
        "learn_condition = 'return function(task, is_spam, is_unlearn) return true end';" \
        >"$L/classifier-bayes.conf"
    # Offline on an old corpus: hostname checks only see DNS failures and every 2002 date is
    # "in the past"; neither says anything about the message here.
    echo 'group "headers" { symbols { "DATE_IN_PAST" { weight = 0.0; } } }' >"$L/groups.conf"
    # DNS goes to a dead port so anything that still asks fails at once instead of timing out.
    printf 'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }\n' >"$L/options.inc"
    echo "bind_socket = \"127.0.0.1:$NORMAL_PORT\"; count = 2;" >"$O/worker-normal.inc"
    echo "bind_socket = \"127.0.0.1:$CONTROLLER_PORT\"; count = 1;" >"$O/worker-controller.inc"
    echo "bind_socket = \"127.0.0.1:$PROXY_PORT\"; count = 0;" >"$O/worker-proxy.inc"
    echo "type = \"file\"; filename = \"$R/log/rspamd.log\"; level = \"warning\";" >"$O/logging.inc"
    for m in rbl fuzzy_check dkim spf dmarc arc asn greylist ratelimit neural reputation \
        url_reputation replies history_redis dkim_signing arc_signing mx_check emails hfilter \
        metadata_exporter clickhouse elastic phishing dcc external_services antivirus; do
        echo "enabled = false;" >"$O/$m.conf"
    done
    chmod -R a+rwX "$R"
    rspamd -f -i -u root -g root -c /etc/rspamd/rspamd.conf \
        --var=LOCAL_CONFDIR="$R/conf" --var=DBDIR="$R/db" --var=RUNDIR="$R/run" --var=LOGDIR="$R/log" \
        >"$R/log/stdout.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 60); do
        rspamc -h 127.0.0.1:$CONTROLLER_PORT stat >/dev/null 2>&1 && break
        sleep 1
    done
    xargs -a "$W/train.spam" -d '\n' rspamc -h 127.0.0.1:$CONTROLLER_PORT -n 4 learn_spam >"$R/log/learn.log"
    xargs -a "$W/train.ham" -d '\n' rspamc -h 127.0.0.1:$CONTROLLER_PORT -n 4 learn_ham >>"$R/log/learn.log"
    echo "rspamd learned: $(grep -c 'success = true' "$R/log/learn.log") ok, $(grep -c 'success = false\|error' "$R/log/learn.log") failed" >&2
    # Classify in batches; output blocks start with "Results for file: PATH (SCORE)"
    # and carry an "Action: ..." line.
    awk -F'\t' '{print $1}' "$W/dev.lst" | xargs -d '\n' rspamc -h 127.0.0.1:$NORMAL_PORT -n 4 symbols \
        >"$R/out.txt" 2>"$R/log/rspamc.err"
    echo "rspamd dev messages with a BAYES_SPAM/BAYES_HAM verdict: $(grep -cE 'Symbol: BAYES_(SPAM|HAM)' "$R/out.txt")" >&2
    python3 - "$W/dev.lst" "$R/out.txt" >"$W/rspamd.res" <<'EOF'
import sys, re
meta = {}
for line in open(sys.argv[1]):
    path, label, source = line.rstrip("\n").split("\t")
    meta[path] = (label, source)
cur = None
res = {}
for line in open(sys.argv[2], errors="replace"):
    m = re.match(r"Results for file: (.*) \(([-\d.]+) seconds\)", line) or re.match(r"Results for file: (.*)", line)
    if m:
        cur = m.group(1).strip().rsplit(" (", 1)[0] if m.group(1).strip() not in meta else m.group(1).strip()
        continue
    m = re.match(r"Action: (.*)", line)
    if m and cur in meta:
        res[cur] = [m.group(1).strip(), 0.0]
    m = re.match(r"Score: ([-\d.]+) / ", line)
    if m and cur in res:
        res[cur][1] = float(m.group(1))
for path, (label, source) in meta.items():
    if path not in res:
        print(f"rspamd: no result for {path}", file=sys.stderr)
        continue
    action, score = res[path]
    held = 1 if action in ("reject", "add header", "rewrite subject") else 0
    print(label, source, held, score)
EOF
fi

# --- Table ----------------------------------------------------------------------------------
python3 - "$W" <<'EOF'
import sys, os, collections
w = sys.argv[1]
print(f"{'tool':<13} {'source':<13} {'spam':>5} {'caught%':>8} {'ham':>5} {'fp%':>6} {'fp':>4}")
for tool in ("levee", "sa", "rspamd"):
    path = os.path.join(w, tool + ".res")
    if not os.path.exists(path):
        continue
    t = collections.defaultdict(lambda: [0, 0, 0, 0])
    for line in open(path):
        parts = line.split()
        if len(parts) < 3:
            continue
        label, source, held = parts[0], parts[1], int(parts[2])
        for key in (source, "POOLED"):
            if label == "spam":
                t[key][0] += 1; t[key][1] += held
            else:
                t[key][2] += 1; t[key][3] += held
    name = {"sa": "spamassassin"}.get(tool, tool)
    for key in sorted(k for k in t if k != "POOLED") + ["POOLED"]:
        s, c, h, f = t[key]
        cp = 100.0 * c / s if s else 0.0
        fp = 100.0 * f / h if h else 0.0
        print(f"{name:<13} {key:<13} {s:>5} {cp:>8.2f} {h:>5} {fp:>6.2f} {f:>4}")
EOF
