# Shared helpers for the Levee init scripts (sourced, not run).
# busybox ash runs its own applets before PATH: call e2fsprogs and friends by full path.
PATH=/usr/sbin:/usr/bin
export PATH

# shellcheck disable=SC2034 # used by the scripts that source this
LEVEE_CONFIG=/data/levee/levee.toml
# shellcheck disable=SC2034
NETWORK_CONFIG=/data/etc/network.conf

kmsg() { echo "levee-init: $*" >/dev/kmsg 2>/dev/null; }

# The block device of the GPT partition called $1 (the builds name them levee-esp, levee-root,
# levee-data), found through sysfs so no udev or blkid is needed.
part_by_name() {
	for u in /sys/class/block/*/uevent; do
		if grep -qx "PARTNAME=$1" "$u" 2>/dev/null; then
			echo "/dev/$(sed -n 's/^DEVNAME=//p' "$u")"
			return 0
		fi
	done
	return 1
}

# A setting read from QEMU's fw_cfg (`-fw_cfg name=opt/io.levee/NAME,...`): how a test or a VM
# host seeds the first boot. Real hardware has no fw_cfg, so this is a no-op there.
fw_cfg() {
	f=/sys/firmware/qemu_fw_cfg/by_name/opt/io.levee/$1/raw
	[ -r "$f" ] && cat "$f"
}

# The first IPv4 address of the box, for the banner.
first_address() {
	ip -4 -o addr show scope global 2>/dev/null | sed -n '1s/.* inet \([0-9.]*\).*/\1/p'
}

# The first NIC that is not loopback, in name order (eth0, enp1s0, ...).
first_nic() {
	for n in /sys/class/net/*; do
		n=${n##*/}
		[ "$n" = lo ] && continue
		[ -e "/sys/class/net/$n/device" ] || continue
		echo "$n"
		return 0
	done
	return 1
}
