# shellcheck shell=bash
# Drive a Levee guest in QEMU from bash (sourced by tests/image/run.sh and bench/image.sh).
#
# The guest gets a root shell on its second serial port (ttyS1) only because qemu.sh --shell
# sets fw_cfg opt/io.levee/debug-shell=1; this file talks to that shell through socat:
# commands go into a FIFO, output lands in a file, and each command ends with a marker line
# carrying its exit status. The first serial port (ttyS0) is the appliance console, logged
# to a file.
#
# Needs: REPO, and SMTP_PORT / HTTPS_PORT for the host port forwards.

GUEST_DIR=
GUEST_QEMU=
GUEST_SOCAT=
GUEST_FD=
GUEST_N=0
GUEST_BOOT_ID=

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# A TCP port nothing listens on, below Linux's ephemeral range (32768-60999) so that no
# outgoing connection holds it either.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 12000))
		ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
	done
}

# guest_start DIR FIRMWARE [qemu.sh options...]: boot DIR/levee.img in the background.
guest_start() {
	GUEST_DIR=$1
	local fw=$2
	shift 2
	rm -f "$GUEST_DIR/shell.sock" "$GUEST_DIR/qemu.pid"
	: >>"$GUEST_DIR/console.log"
	"$REPO/image/qemu.sh" "--$fw" --serial "$GUEST_DIR/console.log" --shell "$GUEST_DIR/shell.sock" \
		--smtp "$SMTP_PORT" --https "$HTTPS_PORT" "$@" "$GUEST_DIR/levee.img" \
		>>"$GUEST_DIR/qemu.out" 2>&1 &
	GUEST_QEMU=$! # qemu.sh execs QEMU: this is QEMU's pid
	for _ in $(seq 300); do
		[ -S "$GUEST_DIR/shell.sock" ] && break
		kill -0 "$GUEST_QEMU" 2>/dev/null || { cat "$GUEST_DIR/qemu.out" >&2; return 1; }
		sleep 0.1
	done
	[ -S "$GUEST_DIR/shell.sock" ] || return 1
	rm -f "$GUEST_DIR/shell.in"
	mkfifo "$GUEST_DIR/shell.in"
	: >"$GUEST_DIR/shell.out"
	exec {GUEST_FD}<>"$GUEST_DIR/shell.in"
	socat "UNIX-CONNECT:$GUEST_DIR/shell.sock" - <"$GUEST_DIR/shell.in" >"$GUEST_DIR/shell.out" 2>/dev/null &
	GUEST_SOCAT=$!
}

# Output written to shell.out since byte offset $1, without carriage returns.
shell_since() { tail -c +"$(($1 + 1))" "$GUEST_DIR/shell.out" | tr -d '\r'; }

# guest_wait_shell TIMEOUT: wait for a shell of a boot other than the last one seen.
guest_wait_shell() {
	local deadline=$(($(date +%s) + ${1:-300})) start id
	while [ "$(date +%s)" -lt "$deadline" ]; do
		kill -0 "$GUEST_QEMU" 2>/dev/null || return 1
		start=$(stat -c %s "$GUEST_DIR/shell.out")
		printf 'stty -echo; PS1= PS2=; echo "@@READY@@ $(cat /proc/sys/kernel/random/boot_id)"\n' >&"$GUEST_FD"
		sleep 2
		id=$(shell_since "$start" | sed -n 's/^@@READY@@ \([0-9a-f-]\{36\}\)$/\1/p' | tail -n 1)
		if [ -n "$id" ] && [ "$id" != "$GUEST_BOOT_ID" ]; then
			GUEST_BOOT_ID=$id
			sleep 0.5 # let answers to earlier probes drain
			return 0
		fi
	done
	return 1
}

# gsh COMMAND [TIMEOUT]: run a one-line command in the guest, print its output, return its status.
gsh() {
	local cmd=$1 deadline=$(($(date +%s) + ${2:-60})) n start rc
	GUEST_N=$((GUEST_N + 1))
	n=$GUEST_N
	start=$(stat -c %s "$GUEST_DIR/shell.out")
	printf '{ %s\n} </dev/null 2>&1; echo "@@END%d@@ $?"\n' "$cmd" "$n" >&"$GUEST_FD"
	while [ "$(date +%s)" -lt "$deadline" ]; do
		if shell_since "$start" | grep -q "@@END$n@@ [0-9]"; then
			shell_since "$start" | sed -n "/@@END$n@@/q;p"
			rc=$(shell_since "$start" | sed -n "s/.*@@END$n@@ \([0-9]*\).*/\1/p" | head -n 1)
			return "$rc"
		fi
		sleep 0.2
	done
	echo "gsh: timed out: $cmd" >&2
	return 124
}

# guest_wait_smtp TIMEOUT: wait until the forwarded SMTP port answers with a 220 banner.
guest_wait_smtp() {
	local deadline=$(($(date +%s) + ${1:-300})) line
	while [ "$(date +%s)" -lt "$deadline" ]; do
		kill -0 "$GUEST_QEMU" 2>/dev/null || return 1
		line=$(timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SMTP_PORT && head -c 4 <&3 && printf 'QUIT\r\n' >&3" 2>/dev/null) || true
		case "$line" in 220*) return 0 ;; esac
		sleep 0.5
	done
	return 1
}

# Close the shell connection; the guest keeps running.
guest_disconnect() {
	[ -n "$GUEST_FD" ] && exec {GUEST_FD}>&-
	GUEST_FD=
	[ -n "$GUEST_SOCAT" ] && kill "$GUEST_SOCAT" 2>/dev/null
	[ -n "$GUEST_SOCAT" ] && wait "$GUEST_SOCAT" 2>/dev/null
	GUEST_SOCAT=
}

# Pull the plug: SIGKILL QEMU, so nothing in the guest's page cache reaches the disk.
guest_kill() {
	[ -n "$GUEST_QEMU" ] && kill -KILL "$GUEST_QEMU" 2>/dev/null
	[ -n "$GUEST_QEMU" ] && wait "$GUEST_QEMU" 2>/dev/null
	GUEST_QEMU=
	guest_disconnect
}

# A clean power-off from inside; pulls the plug if it takes longer than TIMEOUT.
guest_poweroff() {
	gsh "poweroff" 10 >/dev/null
	for _ in $(seq $((${1:-120} * 5))); do
		kill -0 "$GUEST_QEMU" 2>/dev/null || break
		sleep 0.2
	done
	guest_kill
}
