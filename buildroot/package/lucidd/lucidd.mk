################################################################################
#
# lucidd: the appliance daemon, installed as /usr/bin/lucidd.
#
# Two ways, chosen in menuconfig:
# - BR2_PACKAGE_LUCIDD_PREBUILT (default): install the static aarch64 binary that the
#   repository's own pinned toolchain builds (`cargo build --release --target
#   aarch64-unknown-linux-musl -p lucidd`). The workspace needs Rust 1.95 (edition
#   2024), newer than the host-rust of current Buildroot releases, and a fully static
#   musl binary does not care which C library the Buildroot toolchain uses.
# - otherwise: build from source with Buildroot's cargo infrastructure (vendored crates,
#   offline), for a Buildroot whose host-rust is new enough.
#
################################################################################

LUCIDD_VERSION = 0.1.0
LUCIDD_SITE = $(BR2_EXTERNAL_LUCID_PATH)/..
LUCIDD_SITE_METHOD = local
LUCIDD_LICENSE = Apache-2.0
LUCIDD_LICENSE_FILES = README.md
# out/ and target/ of the source tree must not be rsynced into the build directory.
LUCIDD_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude out --exclude target

ifeq ($(BR2_PACKAGE_LUCIDD_PREBUILT),y)

LUCIDD_PREBUILT_BINARY = $(BR2_EXTERNAL_LUCID_PATH)/../target/aarch64-unknown-linux-musl/release/lucidd

define LUCIDD_BUILD_CMDS
	@test -x $(LUCIDD_PREBUILT_BINARY) || { \
		echo "lucidd: $(LUCIDD_PREBUILT_BINARY) is missing; run" \
		     "'cargo build --release --target aarch64-unknown-linux-musl -p lucidd'" \
		     "in the repository first (see docs/image.md)"; exit 1; }
endef

define LUCIDD_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(LUCIDD_PREBUILT_BINARY) $(TARGET_DIR)/usr/bin/lucidd
endef

$(eval $(generic-package))

else

# The workspace has several members; build only the daemon.
LUCIDD_CARGO_BUILD_OPTS = -p lucidd

define LUCIDD_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/lucidd \
		$(TARGET_DIR)/usr/bin/lucidd
endef

$(eval $(cargo-package))

endif
