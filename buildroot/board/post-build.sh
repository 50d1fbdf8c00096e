#!/bin/sh
# Buildroot post-build (arguments: TARGET_DIR, then the board name from
# BR2_ROOTFS_POST_SCRIPT_ARGS). Installs what the Debian-based image build generates from
# the same board manifest: /etc/lucid/{lucidd.toml,release,board.env}, the OTA key in
# /etc/lucid/ota-keys, /etc/hostname, /etc/fstab, the mount points; the daemon checks the
# config first (`lucidd config` under qemu-aarch64-static). The shared rootfs overlay
# (image/rootfs) comes in via BR2_ROOTFS_OVERLAY. See docs/image.md, "Buildroot".
#
# Runs the host xtask built beforehand (`cargo build --release -p xtask`), not cargo:
# Buildroot puts its own, older cargo first in PATH. Environment:
#   LUCID_XTASK     the xtask binary (default REPO/target/release/xtask)
#   LUCID_BUILD     build number (default 1); post-image must see the same
#   LUCID_KEYS_DIR  development OTA keys, made once (default REPO/out/keys)
#   LUCID_OTA_KEY / LUCID_OTA_VKEY  production keys instead
set -eu
TARGET_DIR=$1
BOARD=$2
REPO=$(realpath "$BR2_EXTERNAL_LUCID_PATH/..")
XTASK=${LUCID_XTASK:-$REPO/target/release/xtask}
if [ ! -x "$XTASK" ]; then
	echo "lucid: no $XTASK: run 'cargo build --release -p xtask' in $REPO first (or set LUCID_XTASK)" >&2
	exit 1
fi
"$XTASK" rootfs-files "$BOARD" "$TARGET_DIR" --build "${LUCID_BUILD:-1}" --keys "${LUCID_KEYS_DIR:-$REPO/out/keys}"
