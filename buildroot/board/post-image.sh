#!/bin/sh
# Buildroot post-image (argument: the board name). The same step as the Debian-based
# build: xtask assembles the A/B layout (p1 bootctl, p2/p3 boot, p5/p6 root, p7 data)
# with genimage, from Buildroot's kernel, device trees, firmware and rootfs.squashfs.
set -eu
# NOT YET IMPLEMENTED: `xtask image --from-buildroot` (the Buildroot entry into the shared image
# step) is the missing piece; see docs/image.md. Fail loudly rather than emit a bad image.
echo "lucid: xtask image --from-buildroot is not implemented yet (docs/image.md, Buildroot)" >&2
exit 1
BINARIES_DIR=$1
BOARD=$2
REPO=$(realpath "$BR2_EXTERNAL_LUCID_PATH/..")
cargo run -q --manifest-path "$REPO/Cargo.toml" -p xtask -- image "$BOARD" \
	--from-buildroot "$BINARIES_DIR" --out "$BINARIES_DIR/lucid" --build "${LUCID_BUILD:-1}"
