#!/bin/bash
# Buildroot post-image: assemble the ESP and the GPT disk image with genimage.
# $1: images directory ($BINARIES_DIR); $2: this board directory.
set -euo pipefail
BOARD_DIR=$2
cd "$BINARIES_DIR"

# The ESP's contents: GRUB for UEFI (the grub2 package put it in efi-part/EFI/BOOT/bootx64.efi),
# the shared grub.cfg, the kernel.
[ -e efi-part/EFI/BOOT/bootx64.efi ] || { echo "post-image: no GRUB EFI image" >&2; exit 1; }
mkdir -p efi-part/boot
cp "$BOARD_DIR/grub.cfg" efi-part/EFI/BOOT/grub.cfg
cp bzImage efi-part/boot/bzImage

# BIOS: GRUB's boot.img jumps to the core image at the LBA stored at offset 0x5c; the core
# image lives in the BIOS boot partition at 1 MiB (LBA 2048), not right after the MBR where
# the GPT is. (grub-bios-setup would patch this; genimage only copies.)
cp boot.img boot-gpt.img
printf '\000\010\000\000\000\000\000\000' | dd of=boot-gpt.img bs=1 seek=$((0x5c)) conv=notrunc status=none

GENIMAGE_TMP=$(mktemp -d)
trap 'rm -rf "$GENIMAGE_TMP"' EXIT
genimage --rootpath "$TARGET_DIR" --tmppath "$GENIMAGE_TMP" --inputpath "$BINARIES_DIR" \
	--outputpath "$BINARIES_DIR" --config "$BOARD_DIR/genimage.cfg"
echo "levee: $BINARIES_DIR/levee.img ($(du -h levee.img | cut -f1))"
