#!/bin/bash
# Boot tests of the Levee appliance image: build the static binary and the image, then boot it
# in QEMU with UEFI (OVMF) and with BIOS (SeaBIOS) and check, from the host and from inside:
#   - mail sent with swaks to the forwarded SMTP port reaches a sink on the host
#     (the guest reaches the host as 10.0.2.2 through QEMU user networking),
#   - the gate's nftables rule set is in the guest's kernel,
#   - the relay's log lines are in the guest's journal (on the data partition),
#   - after a reboot, the config and a queued message are still there and the message goes out,
#   - after pulling the plug right after a 250, the message is delivered on the next boot,
#   - the same inputs build the same image bytes.
# Ends with "N passed, M failed"; exits non-zero on any failure.
#
#   tests/image/run.sh
#   LEVEE_QEMU_ACCEL=tcg tests/image/run.sh     # force TCG even where KVM works
#   LEVEE_BIN=path/to/static/levee ...          # skip the cargo build
#   LEVEE_IMAGE_QUICK=1 ...                     # skip the second (reproducibility) build
# As root on Debian 12 it installs the packages it needs (see PACKAGES below).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
. "$REPO/tests/image/lib.sh"

PACKAGES="linux-image-amd64 busybox-static nftables systemd e2fsprogs fdisk util-linux
	grub-efi-amd64-bin syslinux syslinux-common mtools dosfstools genimage squashfs-tools
	faketime cpio zstd kmod binutils ovmf qemu-system-x86 socat swaks postfix iproute2 spamassassin"

pass=0
fail=0
ok() {
	pass=$((pass + 1))
	echo "ok - $*"
}
not_ok() {
	fail=$((fail + 1))
	echo "not ok - $*"
}
# check NAME COMMAND...: one test, passed when COMMAND succeeds.
check() {
	local name=$1
	shift
	if "$@" >/dev/null; then ok "$name"; else not_ok "$name"; fi
}
finish() {
	guest_kill
	[ -n "${SINK_PID:-}" ] && kill "$SINK_PID" 2>/dev/null
	echo "image tests took $(($(date +%s) - T_START)) s"
	echo "$pass passed, $fail failed"
	[ "$fail" -eq 0 ]
	exit
}
T_START=$(date +%s)
WORK=$(mktemp -d /tmp/levee-image-test.XXXXXX)
chmod 755 "$WORK" # the sink drops to user nobody and writes below it
echo "# work directory: $WORK"

# ------------------------------------------------------------------ packages
missing=
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" -eq 0 ]; then
		echo "# installing:$missing"
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >"$WORK/apt.log" 2>&1 ||
			{ tail -20 "$WORK/apt.log"; not_ok "install packages:$missing"; finish; }
	else
		not_ok "missing packages (run as root to install):$missing"
		finish
	fi
fi

# ------------------------------------------------------------------ build
if [ -z "${LEVEE_BIN:-}" ]; then
	export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-image}
	LEVEE_BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/levee
	t=$(date +%s)
	if (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
		--target x86_64-unknown-linux-gnu -p levee) >"$WORK/cargo.log" 2>&1; then
		ok "static levee binary builds ($(($(date +%s) - t)) s)"
	else
		tail -20 "$WORK/cargo.log"
		not_ok "static levee binary builds"
		finish
	fi
fi
export LEVEE_BIN
check "levee is statically linked" bash -c "! ldd '$LEVEE_BIN' 2>&1 | grep -q '=>'"

# Pin what the build reads from git, so a commit landing between the two builds changes nothing.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export LEVEE_BUILD_ID=${LEVEE_BUILD_ID:-$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)}
t=$(date +%s)
if "$REPO/image/build.sh" --out "$WORK/out1" >"$WORK/build1.log" 2>&1; then
	ok "image builds ($(($(date +%s) - t)) s): $(grep '^image:' "$WORK/build1.log" | sed 's/^image: [^ ]* //')"
else
	tail -20 "$WORK/build1.log"
	not_ok "image builds"
	finish
fi
IMAGE=$WORK/out1/levee.img
if [ -z "${LEVEE_IMAGE_QUICK:-}" ]; then
	if "$REPO/image/build.sh" --out "$WORK/out2" >"$WORK/build2.log" 2>&1 &&
		cmp -s "$IMAGE" "$WORK/out2/levee.img"; then
		ok "the build is reproducible (two builds, same bytes)"
	else
		not_ok "the build is reproducible: $(cmp "$IMAGE" "$WORK/out2/levee.img" 2>&1 | head -n 1)"
	fi
	rm -rf "$WORK/out2"
fi

# ------------------------------------------------------------------ the host side
SMTP_PORT=$(free_port)
HTTPS_PORT=$(free_port)
SINK_PORT=$(free_port)
SINK_DIR=$WORK/sink
mkdir -p "$SINK_DIR"
chmod 777 "$SINK_DIR"
SINK_PID=
sink_start() {
	local user=()
	[ "$(id -u)" -eq 0 ] && user=(-u nobody)
	smtp-sink "${user[@]}" -4 -h sink.test -d "$SINK_DIR/%Y%m%d%H%M%S." "127.0.0.1:$SINK_PORT" 64 \
		>>"$WORK/sink.log" 2>&1 &
	SINK_PID=$!
	sleep 0.3
}
sink_stop() {
	[ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null
	SINK_PID=
}
# sink_has TEXT TIMEOUT: a message containing TEXT reached the sink.
sink_has() {
	local deadline=$(($(date +%s) + $2))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		grep -rlqF -- "$1" "$SINK_DIR" 2>/dev/null && return 0
		sleep 0.5
	done
	return 1
}
# send TAG: one message through the forwarded port; prints swaks' transcript into the log.
send() {
	swaks --server "127.0.0.1:$SMTP_PORT" --from "sender@outside.test" --to "user@example.test" \
		--header "Subject: levee image test $1" --body "body of $1" --timeout 60 \
		>"$WORK/swaks-$1.log" 2>&1
}
queue_id() { sed -n 's/.*queued as \([0-9A-Fa-f]\{16\}\).*/\1/p' "$WORK/swaks-$1.log" | head -n 1; }

# The guest's first-boot config, handed over through fw_cfg: one domain delivered to the sink.
cat >"$WORK/seed.toml" <<EOF
hostname = "levee.test"
data_dir = "/data/levee"

[smtp]
listen = ["0.0.0.0:25"]

[delivery]
retry_first_secs = 2
retry_max_interval_secs = 5

[console]
listen = ["0.0.0.0:443"]

[gate]
enabled = true
lan = ["10.0.2.0/24"]

[[domain]]
name = "example.test"
downstream = "10.0.2.2:$SINK_PORT"
tls = "none"
EOF

# boot FIRMWARE NAME: boot the guest and wait for its shell and its SMTP banner.
boot() {
	local t0
	t0=$(now)
	guest_start "$WORK/$2" "$1" --seed "$WORK/seed.toml" || return 1
	guest_wait_smtp 600 || return 1
	echo "# $2: SMTP banner $(elapsed "$t0" "$(now)") s after QEMU start"
	guest_wait_shell 300
}

# A hook for the console: once `[console]` serves HTTPS, fetch its login page through the
# forwarded port (curl -k https://127.0.0.1:$HTTPS_PORT/) and count it as a test.
check_console() {
	if gsh "grep -q '^\[console\]' /data/levee/levee.toml" >/dev/null; then
		check "$1: the console answers over HTTPS" \
			curl -ksf -o /dev/null "https://127.0.0.1:$HTTPS_PORT/"
	else
		echo "# $1: console not configured in this build; HTTPS check skipped"
	fi
}

# ------------------------------------------------------------------ UEFI, then BIOS
sink_start
for fw in uefi bios; do
	name=$fw
	mkdir -p "$WORK/$name"
	cp "$IMAGE" "$WORK/$name/levee.img"
	# A disk larger than the image: the first boot grows the data partition.
	truncate -s 1G "$WORK/$name/levee.img"
	if ! boot "$fw" "$name"; then
		not_ok "$name: boots to the SMTP banner and the test shell"
		tail -30 "$WORK/$name/console.log"
		guest_kill
		continue
	fi
	ok "$name: boots to the SMTP banner and the test shell ($(grep -o 'accelerator [a-z]*' "$WORK/$name/qemu.out" | head -n 1))"

	data_mib=$(gsh "df -m /data | awk 'NR==2{print \$2}'")
	check "$name: the data partition grew to fill the disk (${data_mib:-?} MiB)" test "${data_mib:-0}" -gt 700

	send "$name-1"
	check "$name: mail through the forwarded port reaches the sink" sink_has "levee image test $name-1" 60
	check "$name: delivered mail carries the install stamp" bash -c "grep -rl 'levee image test $name-1' '$SINK_DIR' | xargs grep -q '^X-Levee-Stamp: [0-9a-f]'"

	ruleset=$(gsh "nft list ruleset")
	check "$name: the gate's rule set is loaded" \
		bash -c "grep -q 'table inet levee' <<<\"\$1\" && grep -q 'tcp dport 25' <<<\"\$1\" && grep -q 'policy drop' <<<\"\$1\"" _ "$ruleset"
	journal=$(gsh "journalctl --no-pager -o short-monotonic -t levee")
	check "$name: the relay logs to the guest's journal" grep -q "SMTP listening" <<<"$journal"
	check "$name: the image ships SpamAssassin's rules with their licence" \
		gsh "ls /usr/share/spamassassin/50_scores.cf /usr/share/doc/spamassassin/NOTICE /usr/share/doc/spamassassin/LICENSE"
	check "$name: the engine loaded the shipped SpamAssassin rules" grep -q "SpamAssassin rules loaded" <<<"$journal"
	check "$name: the journal is persistent on /data" gsh "ls /data/journal/\$(cat /etc/machine-id)/system.journal"
	check_console "$name"

	# Reboot with a message in the queue: the sink is down, so it cannot be delivered yet.
	sink_stop
	send "$name-queued"
	qid=$(queue_id "$name-queued")
	check "$name: a message is queued while the downstream is down" \
		gsh "test -n '$qid' && ls /data/levee/spool/queue/$qid"
	config_before=$(gsh "sha256sum /data/levee/levee.toml")
	stamp_before=$(grep -rl "levee image test $name-1" "$SINK_DIR" | head -n 1 | xargs -r grep -h '^X-Levee-Stamp:')
	gsh "reboot" 10 >/dev/null
	t=$(now)
	if guest_wait_shell 600 && guest_wait_smtp 600; then
		ok "$name: reboots ($(elapsed "$t" "$(now)") s)"
		check "$name: the config survives the reboot" \
			bash -c "[ -n \"\$1\" ] && [ \"\$1\" = \"\$2\" ]" _ "$config_before" "$(gsh "sha256sum /data/levee/levee.toml")"
		check "$name: the queued message survives the reboot" gsh "ls /data/levee/spool/queue/$qid"
		sink_start
		check "$name: the queued message is delivered after the reboot" sink_has "levee image test $name-queued" 90
		check "$name: the install stamp is the same after the reboot" \
			bash -c "grep -rl 'levee image test $name-queued' '$SINK_DIR' | xargs grep -qxF -- '$stamp_before'"
	else
		not_ok "$name: reboots"
		tail -30 "$WORK/$name/console.log"
		sink_start
	fi

	# Pull the plug right after the 250.
	sink_stop
	send "$name-powercut"
	guest_kill
	if grep -q "^<-  250 .*queued as" "$WORK/swaks-$name-powercut.log"; then
		ok "$name: the message before the power cut got its 250"
	else
		not_ok "$name: the message before the power cut got its 250"
	fi
	sink_start
	if boot "$fw" "$name"; then
		ok "$name: boots after the power cut"
		check "$name: the message accepted before the power cut is delivered" \
			sink_has "levee image test $name-powercut" 90
	else
		not_ok "$name: boots after the power cut"
		tail -30 "$WORK/$name/console.log"
	fi

	# Figures from the guest's own clock: init start to SMTP listening.
	gsh "journalctl --no-pager -o short-monotonic -b | grep -E 'levee-initramfs: start|SMTP listening'" |
		sed "s/^/# $name: /"
	guest_poweroff 120
	rm -f "$WORK/$name/levee.img"
done

finish
