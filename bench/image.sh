#!/bin/bash
# Figures for the appliance image: size (raw and zstd-compressed; goal <= 64 MiB compressed),
# build time, time from QEMU start to the SMTP banner on the forwarded port, and, by the guest's
# own clock, time from init start (the initramfs /init) to "SMTP listening" (goal < 2 s).
# Boots twice: the first boot grows and formats /data, the second is an ordinary one.
#
#   bench/image.sh [FIRMWARE]        FIRMWARE: uefi (default) or bios
#   LEVEE_BIN=...  LEVEE_QEMU_ACCEL=kvm|tcg|auto
# Needs what tests/image/run.sh installs. Writes bench/out/image.txt too.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/tests/image/lib.sh"
fw=${1:-uefi}

WORK=$(mktemp -d /tmp/levee-image-bench.XXXXXX)
trap 'guest_kill; rm -rf "$WORK"' EXIT
mkdir -p "$REPO/bench/out"
report=$REPO/bench/out/image.txt
: >"$report"
say() { echo "$*" | tee -a "$report"; }

if [ -z "${LEVEE_BIN:-}" ]; then
	export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-image}
	LEVEE_BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/levee
	(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
		--target x86_64-unknown-linux-gnu -p levee) || exit 1
fi
export LEVEE_BIN

t0=$(now)
"$REPO/image/build.sh" --out "$WORK/out" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
build_s=$(elapsed "$t0" "$(now)")
raw=$(stat -c %s "$WORK/out/levee.img")
zst=$(stat -c %s "$WORK/out/levee.img.zst")
xz -T1 -6 -c "$WORK/out/levee.img" >"$WORK/levee.img.xz"
xzs=$(stat -c %s "$WORK/levee.img.xz")
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

say "# Levee image figures ($(date -u +%Y-%m-%d), $(nproc) cores, firmware $fw)"
say "image size raw:             $(mib "$raw")"
say "image size zstd -19:        $(mib "$zst")   (goal <= 64 MiB)"
say "image size xz -6:           $(mib "$xzs")"
say "build time (image only):    ${build_s} s"

SMTP_PORT=$(free_port)
HTTPS_PORT=$(free_port)
mkdir -p "$WORK/vm"
cp "$WORK/out/levee.img" "$WORK/vm/levee.img"
truncate -s 1G "$WORK/vm/levee.img"

# guest_init_to_smtp: from the journal of the current boot, initramfs start -> SMTP listening.
guest_init_to_smtp() {
	gsh "journalctl --no-pager -o short-monotonic -b | grep -E 'levee-initramfs: start|SMTP listening'" |
		awk -F'[][]' '/initramfs: start/ && !s { s = $2 } /SMTP listening/ && !l { l = $2 }
			END { if (s != "" && l != "") printf "%.2f", l - s; else print "?" }'
}

# guest_milestones: the boot's stages by the guest's clock, seconds after the initramfs' start.
guest_milestones() {
	gsh "journalctl --no-pager -o short-monotonic -b | grep -E 'levee-initramfs: (start|storage drivers)|levee-init: (rcS|data mounted|network and netfilter|levee supervise)|Journal started|SMTP listening'" |
		sed 's/\x1b\[[0-9;]*m//g' | awk -F'[][]' '
			/initramfs: start/ && s == "" { s = $2 }
			s != "" {
				t = $0
				sub(/^[^]]*\] [^ ]+ /, "", t)                 # "[ 1.23] host " off
				sub(/^(levee-init|levee-initramfs|systemd-journald\[[0-9]+\]|levee\[[0-9]+\]): /, "", t)
				sub(/ uptime=.*/, "", t)
				printf "%s %.2f %s", sep, $2 - s, t
				sep = ","
			}
			END { print "" }'
}

for boot in first second; do
	t0=$(now)
	if [ "$boot" = first ]; then
		guest_start "$WORK/vm" "$fw" || exit 1
		accel=$(grep -o 'accelerator [a-z]*' "$WORK/vm/qemu.out" | head -n 1)
	else
		gsh "reboot" 10 >/dev/null
		t0=$(now)
	fi
	guest_wait_smtp 600 || { echo "no SMTP banner"; exit 1; }
	banner_s=$(elapsed "$t0" "$(now)")
	guest_wait_shell 300 || { echo "no guest shell"; exit 1; }
	say "$boot boot ($accel): QEMU start/reboot -> SMTP banner ${banner_s} s (host clock)"
	say "$boot boot ($accel): init start -> SMTP listening $(guest_init_to_smtp) s (guest clock; goal < 2 s)"
	say "$boot boot stages (s after init start):$(guest_milestones)"
done
guest_poweroff 60
echo "written to $report"
