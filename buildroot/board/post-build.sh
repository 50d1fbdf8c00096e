#!/bin/sh
# Buildroot post-build (argument: the board name, from BR2_ROOTFS_POST_SCRIPT_ARGS).
# Installs what the Debian-based image build generates from the same board manifest:
# /etc/lucid/{lucidd.toml,release,board.env}, /etc/fstab, the OTA keys, the applet
# mount points. The shared rootfs overlay (image/rootfs) comes in via BR2_ROOTFS_OVERLAY.
set -eu
# NOT YET IMPLEMENTED: `xtask rootfs-files` (the Buildroot entry into the shared image
# step) is the missing piece; see docs/image.md. Fail loudly rather than emit a bad image.
echo "lucid: xtask rootfs-files is not implemented yet (docs/image.md, Buildroot)" >&2
exit 1
TARGET_DIR=$1
BOARD=$2
REPO=$(realpath "$BR2_EXTERNAL_LUCID_PATH/..")
cargo run -q --manifest-path "$REPO/Cargo.toml" -p xtask -- rootfs-files "$BOARD" "$TARGET_DIR" --build "${LUCID_BUILD:-1}"
