#!/bin/sh
# Buildroot post-build: the read-only root's links into /run and /data (as image/build.sh does).
# $1: target directory.
set -eu
TARGET=$1
ln -sfn /run/resolv.conf "$TARGET/etc/resolv.conf"
# systemd may have installed /var/log/journal as a directory; ln would link inside it.
mkdir -p "$TARGET/var/log"
rm -rf "$TARGET/var/log/journal"
ln -s /data/journal "$TARGET/var/log/journal"
mkdir -p "$TARGET/data"
# The kernel here has the drivers built in: nothing for rcS or modules-load to load.
: >"$TARGET/etc/levee/modules"
# systemd reads /etc/machine-id before /data is mounted; leave it empty so it makes a transient
# one, and let the first-boot script persist it (see README).
: >"$TARGET/etc/machine-id"
grep -q '^levee ' "$TARGET/etc/os-release" 2>/dev/null || cat >"$TARGET/etc/os-release" <<OS
NAME="Levee"
ID=levee
PRETTY_NAME="Levee mail gateway (Buildroot)"
OS
