#!/bin/bash
# shellcheck disable=SC2054 # commas are QEMU option syntax, not array separators
# Boot the Levee disk image in QEMU. See image/README.md.
#
#   image/qemu.sh [options] [IMAGE]          (IMAGE defaults to image/out/levee.img)
#     --uefi | --bios         firmware: OVMF (default) or SeaBIOS
#     --smtp PORT             forward 127.0.0.1:PORT on the host to the guest's TCP 25 (default 2525)
#     --https PORT            forward 127.0.0.1:PORT to the guest's TCP 443 (default 8443)
#     --serial FILE           write the console (ttyS0) to FILE instead of this terminal
#     --shell SOCKET          a root shell on ttyS1 at this unix socket (test use; see tests/image)
#     --seed FILE             first-boot config (levee.toml) handed over through fw_cfg
#     --seed-network FILE     first-boot network.conf handed over through fw_cfg
#     --pidfile FILE          write QEMU's pid here
#     --memory MIB            guest memory (default 1024)
#   LEVEE_QEMU_ACCEL=kvm|tcg|auto (default auto: KVM only when a probe guest really runs on it)
#
# The image is used in place (it is the guest's disk): copy it first to keep a pristine one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

firmware=uefi
smtp=2525
https=8443
serial=
shell=
seed=
seed_net=
pidfile=
memory=1024
image=$here/out/levee.img
while [ $# -gt 0 ]; do
	case "$1" in
	--uefi) firmware=uefi; shift ;;
	--bios) firmware=bios; shift ;;
	--smtp) smtp=$2; shift 2 ;;
	--https) https=$2; shift 2 ;;
	--serial) serial=$2; shift 2 ;;
	--shell) shell=$2; shift 2 ;;
	--seed) seed=$2; shift 2 ;;
	--seed-network) seed_net=$2; shift 2 ;;
	--pidfile) pidfile=$2; shift 2 ;;
	--memory) memory=$2; shift 2 ;;
	-h | --help) sed -n '2,17p' "$0"; exit 0 ;;
	-*) echo "qemu.sh: unknown option $1" >&2; exit 2 ;;
	*) image=$1; shift ;;
	esac
done
[ -r "$image" ] || { echo "qemu.sh: no image at $image (run image/build.sh)" >&2; exit 1; }

# /dev/kvm can exist and still fail once a guest runs (nested virtualisation without support,
# or a sandbox). Probe with a 64 KiB "BIOS" whose first instruction writes to QEMU's
# isa-debug-exit port: QEMU then exits with status 3 only if the guest really executed.
kvm_works() {
	[ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
	local probe rc=0
	probe=$(mktemp /tmp/levee-kvm-probe.XXXXXX)
	{
		head -c 65520 /dev/zero | tr '\0' '\364'
		# mov al,1; out 0xf4,al; hlt; jmp $-1; padding (hlt)
		printf '\260\001\346\364\364\353\375\364\364\364\364\364\364\364\364\364'
	} >"$probe"
	# (In a subshell: a QEMU that aborts would have bash report it on our stderr.)
	(timeout 20 qemu-system-x86_64 -accel kvm -machine pc -cpu host -bios "$probe" -nodefaults \
		-display none -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
		>/dev/null 2>&1) 2>/dev/null || rc=$?
	rm -f "$probe"
	[ "$rc" -eq 3 ]
}

accel=${LEVEE_QEMU_ACCEL:-auto}
if [ "$accel" = auto ]; then
	if kvm_works; then accel=kvm; else accel=tcg; fi
fi
case "$accel" in
kvm) accel_args=(-accel kvm -cpu host -smp 2) ;;
tcg) accel_args=(-accel tcg,thread=multi -cpu max -smp 1) ;;
*) echo "qemu.sh: LEVEE_QEMU_ACCEL must be kvm, tcg or auto" >&2; exit 2 ;;
esac
echo "qemu.sh: $firmware boot, accelerator $accel, SMTP on 127.0.0.1:$smtp, HTTPS on 127.0.0.1:$https" >&2

args=(-machine q35 -m "$memory" "${accel_args[@]}" -nodefaults -no-user-config -display none -vga std
	-drive "file=$image,format=raw,if=virtio"
	-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$smtp-:25,hostfwd=tcp:127.0.0.1:$https-:443"
	-device virtio-net-pci,netdev=n0
	-device virtio-rng-pci)
if [ "$firmware" = uefi ]; then
	args+=(-bios /usr/share/ovmf/OVMF.fd)
fi
if [ -n "$serial" ]; then
	args+=(-serial "file:$serial")
else
	args+=(-serial mon:stdio)
fi
if [ -n "$shell" ]; then
	args+=(-serial "unix:$shell,server=on,wait=off" -fw_cfg name=opt/io.levee/debug-shell,string=1)
fi
[ -n "$seed" ] && args+=(-fw_cfg "name=opt/io.levee/levee.toml,file=$seed")
[ -n "$seed_net" ] && args+=(-fw_cfg "name=opt/io.levee/network.conf,file=$seed_net")
[ -n "$pidfile" ] && args+=(-pidfile "$pidfile")

exec qemu-system-x86_64 "${args[@]}"
