#!/bin/bash
# Build the Levee appliance disk image offline, from Debian packages installed on this host
# plus a static `levee` binary and ../overlay. See image/README.md.
#
#   image/build.sh [--out DIR] [--levee PATH]
#
# Output: DIR/levee.img (raw GPT disk: ESP with GRUB (UEFI) and syslinux (BIOS), kernel and
# initramfs; squashfs root; blank data partition), DIR/levee.img.zst, DIR/manifest.txt.
# Same inputs give the same bytes: every time stamp is SOURCE_DATE_EPOCH (default: the time
# of the last git commit), every id is fixed, every archive is sorted. LEVEE_BUILD_ID (default:
# git describe) names the build in /etc/os-release.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=$repo/image/out
levee_bin=${LEVEE_BIN:-$repo/target-image/x86_64-unknown-linux-gnu/release/levee}
while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=$2; shift 2 ;;
	--levee) levee_bin=$2; shift 2 ;;
	-h | --help) sed -n '2,10p' "$0"; exit 0 ;;
	*) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done

# Sizes of the partitions (MiB). The ESP is FAT32 (needs >= 33 MiB); the root leaves room for
# larger releases; the data partition is formatted on first boot (and can be grown later).
ESP_MIB=64
ROOT_MIB=128
DATA_MIB=64

# Fixed ids: a reproducible image must not draw random numbers.
DISK_UUID=4c657665-652d-4469-736b-000000000001
ESP_UUID=4c657665-652d-4469-736b-000000000002
ROOT_UUID=4c657665-652d-4469-736b-000000000003
DATA_UUID=4c657665-652d-4469-736b-000000000004
ESP_SERIAL=4c455645

# Modules: the initramfs loads what finds the root partition; rcS loads the rest at boot.
# The initramfs loads its storage drivers in this order and stops as soon as the root partition
# shows up (each driver probes its disks while it loads), so the likely disks come first.
# Netfilter modules are all shipped so `nft` can auto-load any expression the gate uses.
INITRD_MODULES="squashfs virtio_pci virtio_blk virtio_scsi sd_mod ahci nvme ata_piix xhci_pci
	ehci_pci uas usb_storage sdhci_pci mmc_block"
# rcS loads EARLY_MODULES before it mounts /data, and BOOT_MODULES alongside (NICs, the gate).
EARLY_MODULES="ext4 qemu_fw_cfg"
BOOT_MODULES="virtio_net virtio_rng e1000 e1000e igb igc r8169
	nf_tables nft_ct nft_limit nft_reject_inet nf_conntrack"
KERNEL_ARGS="console=tty0 console=ttyS0,115200 quiet loglevel=4 panic=10"

die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }
start=$(date +%s)

for t in mksquashfs mkfs.vfat mcopy syslinux grub-mkimage genimage cpio zstd depmod modinfo faketime ldd; do
	command -v "$t" >/dev/null || die "missing tool $t (see image/README.md for the package list)"
done
[ -x "$levee_bin" ] || die "no levee binary at $levee_bin (build it static, see README)"
if ldd "$levee_bin" 2>&1 | grep -q '=>'; then
	die "$levee_bin is dynamically linked; build it with -C target-feature=+crt-static"
fi

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 1700000000)
fi
export SOURCE_DATE_EPOCH TZ=UTC LC_ALL=C
stamp=$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')

# The Debian kernel: the version linux-image-amd64 points at.
kpkg=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | grep -o 'linux-image-[0-9][^ ,]*' | head -n 1) ||
	die "linux-image-amd64 is not installed"
KV=${kpkg#linux-image-}
vmlinuz=/boot/vmlinuz-$KV
moddir=/lib/modules/$KV
[ -r "$vmlinuz" ] && [ -d "$moddir" ] || die "kernel $KV not found in /boot and /lib/modules"

work=$(mktemp -d /tmp/levee-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
initrd=$work/initrd
mkdir -p "$out" "$root" "$initrd"

# ---------------------------------------------------------------- root file system (merged /usr)
for d in usr/bin usr/sbin usr/lib usr/lib64 usr/libexec etc dev proc sys run tmp data root var/log \
	lib/modules; do
	mkdir -p "$root/$d"
done
rmdir "$root/lib/modules" "$root/lib"
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
mkdir -p "$root/usr/lib/modules"

# Copy a file into $1 at the path it has on this host, under /usr (merged), keeping symlink names.
put() {
	local dest=$1 src=$2 rel
	rel=${src#/}
	case "$rel" in bin/* | sbin/* | lib/* | lib64/*) rel=usr/$rel ;; esac
	mkdir -p "$dest/$(dirname "$rel")"
	if [ -L "$src" ]; then
		local target
		target=$(readlink -f "$src")
		put "$dest" "$target"
		[ -e "$dest/$rel" ] || ln -s "$(readlink "$src")" "$dest/$rel"
	elif [ ! -e "$dest/$rel" ]; then
		cp "$src" "$dest/$rel"
	fi
}
# A dynamically linked program and the shared libraries it needs.
put_exec() {
	local f lib
	for f in "$@"; do
		put "$root" "$f"
		for lib in $(ldd "$f" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do
			put "$root" "$lib"
		done
	done
}

put_exec /usr/sbin/nft /usr/sbin/e2fsck /usr/sbin/mke2fs /usr/sbin/sfdisk /usr/bin/partx \
	/usr/lib/systemd/systemd-journald /usr/bin/journalctl /usr/bin/systemd-cat
ln -s mke2fs "$root/usr/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
# Symbols are a third of the binary; the build's own copy keeps them for debugging.
if command -v strip >/dev/null; then
	strip --strip-all -o "$root/usr/bin/levee" "$levee_bin"
else
	cp "$levee_bin" "$root/usr/bin/levee"
fi
chmod 755 "$root/usr/bin/levee"

# SpamAssassin's stock rule set, from the `spamassassin` package where Debian installed it (the
# engine loads /usr/share/spamassassin by default), with its Apache-2.0 licence and notice.
# Only the rule files: the Perl engine is not needed, Levee runs the rules itself.
sa_rules=/usr/share/spamassassin
ls "$sa_rules"/*.cf >/dev/null 2>&1 || die "no SpamAssassin rules in $sa_rules (install the spamassassin package)"
mkdir -p "$root$sa_rules" "$root/usr/share/doc/spamassassin"
cp "$sa_rules"/*.cf "$root$sa_rules/"
cp /usr/share/doc/spamassassin/NOTICE /usr/share/doc/spamassassin/copyright \
	"$root/usr/share/doc/spamassassin/"
cp /usr/share/common-licenses/Apache-2.0 "$root/usr/share/doc/spamassassin/LICENSE"

# busybox-static for init and the userland, one link per applet not taken by a real program.
cp /bin/busybox "$root/usr/bin/busybox"
for a in $(/bin/busybox --list-full); do
	case "$a" in bin/* | sbin/*) a=usr/$a ;; esac
	name=${a##*/}
	[ -e "$root/usr/bin/$name" ] || [ -e "$root/usr/sbin/$name" ] || [ -L "$root/$a" ] && continue
	ln -s /usr/bin/busybox "$root/$a"
done

# Kernel modules: the closure (dependencies and soft pre-dependencies) of what we name.
declare -A seen=()
order=()
mod_closure() {
	local m soft paths path
	for m in "$@"; do
		soft=${m#soft:}
		paths=$(modinfo -k "$KV" -n "$soft" 2>/dev/null) || {
			[ "$soft" != "$m" ] && continue
			die "kernel $KV has no module $m"
		}
		# An alias (crc32c) can name several modules: take them all.
		for path in $paths; do
			mod_path "$path"
		done
	done
}
mod_path() {
	local path=$1 dep
	case "$path" in /*) ;; *) return 0 ;; esac # built into the kernel
	[ -n "${seen[$path]:-}" ] && return 0
	seen[$path]=1
	for dep in $(modinfo -k "$KV" -F depends "$path" | tr ',' ' '); do
		mod_closure "$dep"
	done
	for dep in $(modinfo -k "$KV" -F softdep "$path" | sed -n 's/.*pre: *//p' | sed 's/post:.*//'); do
		mod_closure "soft:$dep"
	done
	order+=("$path")
}
# The initramfs' list: after each named driver (and what it needs), a "?" line: look for the
# root partition there.
initrd_list=()
for m in $INITRD_MODULES; do
	n=${#order[@]}
	mod_closure "$m"
	initrd_list+=("${order[@]:n}" "?")
done
nf_modules=$(cd "$moddir/kernel" && find net/netfilter net/ipv4/netfilter net/ipv6/netfilter -name '*.ko' \
	\( -name 'nf_*' -o -name 'nft_*' -o -name 'nfnetlink*' \) -printf '%f\n' | sed 's/\.ko$//' | sort)
mod_closure $EARLY_MODULES $BOOT_MODULES $nf_modules
for path in "${order[@]}"; do
	rel=${path#"$moddir"/}
	mkdir -p "$root/usr/lib/modules/$KV/$(dirname "$rel")"
	cp "$path" "$root/usr/lib/modules/$KV/$rel"
done
cp "$moddir"/modules.order "$moddir"/modules.builtin "$moddir"/modules.builtin.modinfo \
	"$root/usr/lib/modules/$KV/"
depmod -b "$root/usr" "$KV"
printf '%s\n' $BOOT_MODULES >"$root/etc/levee-modules.tmp"
printf '%s\n' $EARLY_MODULES >"$root/etc/levee-modules-early.tmp"

# The overlay shared with the Buildroot build, then what only this build needs.
cp -a "$repo/overlay/." "$root/"
cp -a "$here/skel/." "$root/"
mv "$root/etc/levee-modules.tmp" "$root/etc/levee/modules"
mv "$root/etc/levee-modules-early.tmp" "$root/etc/levee/modules.early"
ln -s /run/resolv.conf "$root/etc/resolv.conf"
ln -s /run/machine-id "$root/etc/machine-id"
ln -s /proc/self/mounts "$root/etc/mtab"
ln -s /data/journal "$root/var/log/journal"
ln -s /run "$root/var/run"
ln -s /tmp "$root/var/tmp"
levee_version=$({ "$levee_bin" --version 2>/dev/null || true; } | awk '{print $2}')
git_rev=${LEVEE_BUILD_ID:-$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)}
echo "$levee_version ($git_rev)" >"$root/etc/levee-release"
cat >"$root/etc/os-release" <<EOF
NAME="Levee"
ID=levee
VERSION_ID=$levee_version
PRETTY_NAME="Levee mail gateway $levee_version"
BUILD_ID=$git_rev
EOF
chmod 600 "$root/etc/shadow"
chmod 700 "$root/root"
chmod 1777 "$root/tmp"

# ---------------------------------------------------------------- initramfs
mkdir -p "$initrd"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$initrd/bin/busybox"
for a in sh mount umount insmod switch_root sleep grep sed cat mkdir echo reboot; do
	ln -s busybox "$initrd/bin/$a"
done
: >"$initrd/etc-modules"
for path in "${initrd_list[@]}"; do
	if [ "$path" = "?" ]; then
		echo "?" >>"$initrd/etc-modules"
		continue
	fi
	cp "$path" "$initrd/lib/modules/"
	basename "$path" >>"$initrd/etc-modules"
done
mkdir -p "$initrd/etc"
mv "$initrd/etc-modules" "$initrd/etc/modules"
install -m 755 "$here/initramfs-init" "$initrd/init"

# ---------------------------------------------------------------- time stamps, then archives
find "$root" "$initrd" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# mksquashfs takes its time stamps from SOURCE_DATE_EPOCH.
log "root file system: $(du -sh "$root" | cut -f1), initramfs: $(du -sh "$initrd" | cut -f1)"
mksquashfs "$root" "$work/root.sqfs" -noappend -no-progress -quiet -comp zstd -Xcompression-level 19 \
	-all-root >/dev/null
(cd "$initrd" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible) |
	zstd -q -19 -T1 >"$work/initrd.img"

# ---------------------------------------------------------------- EFI system partition
esp=$work/esp
mkdir -p "$esp/EFI/BOOT" "$esp/boot/syslinux"
cp "$vmlinuz" "$esp/boot/vmlinuz"
cp "$work/initrd.img" "$esp/boot/initrd.img"
sed "s|@KERNEL_ARGS@|$KERNEL_ARGS|" "$here/grub.cfg" >"$esp/EFI/BOOT/grub.cfg"
sed "s|@KERNEL_ARGS@|$KERNEL_ARGS|" "$here/syslinux.cfg" >"$esp/boot/syslinux/syslinux.cfg"
# GRUB with its modules built in (no module directory on the ESP), reading EFI/BOOT/grub.cfg.
grub-mkimage -O x86_64-efi -o "$esp/EFI/BOOT/BOOTX64.EFI" -p /EFI/BOOT \
	part_gpt fat normal linux echo search search_fs_file configfile serial terminal test \
	all_video efi_gop sleep
find "$esp" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
# mtools and mkfs.vfat stamp directories with the clock: freeze it.
faketime -f "$stamp" sh -c "
	mkfs.vfat -F 32 -i $ESP_SERIAL -n LEVEE-ESP -C '$work/esp.img' $((ESP_MIB * 1024)) >/dev/null &&
	mcopy -s -p -m -i '$work/esp.img' '$esp/EFI' '$esp/boot' ::/ &&
	syslinux --install --directory /boot/syslinux '$work/esp.img'"

# ---------------------------------------------------------------- disk
cat >"$work/genimage.cfg" <<EOF
image levee.img {
	hdimage {
		partition-table-type = "gpt"
		disk-uuid = "$DISK_UUID"
	}
	partition levee-esp {
		image = "esp.img"
		partition-type-uuid = "U"
		partition-uuid = "$ESP_UUID"
		offset = 1M
		size = ${ESP_MIB}M
		bootable = true
	}
	partition levee-root {
		image = "root.sqfs"
		partition-type-uuid = "L"
		partition-uuid = "$ROOT_UUID"
		size = ${ROOT_MIB}M
	}
	partition levee-data {
		partition-type-uuid = "L"
		partition-uuid = "$DATA_UUID"
		size = ${DATA_MIB}M
	}
}
EOF
mkdir -p "$work/gi-root" "$work/gi-tmp"
genimage --config "$work/genimage.cfg" --inputpath "$work" --outputpath "$work" \
	--rootpath "$work/gi-root" --tmppath "$work/gi-tmp" >"$work/genimage.log" 2>&1 ||
	{ cat "$work/genimage.log" >&2; die "genimage failed"; }
# BIOS: syslinux's GPT-aware MBR boots the partition marked legacy-BIOS-bootable (the ESP).
dd if=/usr/lib/syslinux/mbr/gptmbr.bin of="$work/levee.img" bs=440 count=1 conv=notrunc status=none

mv "$work/levee.img" "$out/levee.img"
zstd -q -f -19 -T1 "$out/levee.img" -o "$out/levee.img.zst"

{
	echo "levee $levee_version ($git_rev), kernel $KV, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
	dpkg-query -W -f='${Package} ${Version}\n' linux-image-amd64 "$kpkg" busybox-static nftables \
		systemd e2fsprogs grub-efi-amd64-bin syslinux syslinux-common spamassassin | sort
	echo "sha256 $(sha256sum "$out/levee.img" | cut -d' ' -f1) levee.img"
} >"$out/manifest.txt"

raw=$(stat -c %s "$out/levee.img")
zst=$(stat -c %s "$out/levee.img.zst")
echo "image: $out/levee.img $((raw / 1048576)) MiB raw, $((zst / 1048576)) MiB compressed ($zst bytes, zstd -19), built in $(($(date +%s) - start)) s"
echo "sha256: $(sha256sum "$out/levee.img" | cut -d' ' -f1)"
