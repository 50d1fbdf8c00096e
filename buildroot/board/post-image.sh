#!/bin/sh
# Buildroot post-image (arguments: BINARIES_DIR, then the board name). The same step as
# the Debian-based build: xtask assembles the A/B layout (p1 bootctl, p2/p3 boot, p5/p6
# root, p7 data) with genimage, from Buildroot's Image, *.dtb, rpi-firmware/, u-boot.bin
# (Pi 3) and rootfs.squashfs; the initramfs from TARGET_DIR's busybox and kernel modules.
# Output in BINARIES_DIR/lucid/BOARD[-buildN]/: BOARD.img, BOARD.img.xz, boot.vfat,
# rootfs.squashfs, release and the OTA bundle. Same environment as post-build.sh.
set -eu
BINARIES_DIR=$1
BOARD=$2
: "${TARGET_DIR:?is exported by Buildroot to post-image scripts}"
REPO=$(realpath "$BR2_EXTERNAL_LUCID_PATH/..")
XTASK=${LUCID_XTASK:-$REPO/target/release/xtask}
if [ ! -x "$XTASK" ]; then
	echo "lucid: no $XTASK: run 'cargo build --release -p xtask' in $REPO first (or set LUCID_XTASK)" >&2
	exit 1
fi
"$XTASK" image "$BOARD" --from-buildroot "$BINARIES_DIR" --target-dir "$TARGET_DIR" \
	--out "$BINARIES_DIR/lucid" --build "${LUCID_BUILD:-1}" --keys "${LUCID_KEYS_DIR:-$REPO/out/keys}"
