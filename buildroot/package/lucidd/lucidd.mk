################################################################################
#
# lucidd: the appliance daemon, built from this repository with Buildroot's cargo
# infrastructure (vendored crates, offline build), installed as /usr/bin/lucidd.
#
################################################################################

LUCIDD_VERSION = 0.1.0
LUCIDD_SITE = $(BR2_EXTERNAL_LUCID_PATH)/..
LUCIDD_SITE_METHOD = local
LUCIDD_LICENSE = Apache-2.0
LUCIDD_LICENSE_FILES = README.md
# The workspace has several members; build only the daemon.
LUCIDD_CARGO_BUILD_OPTS = -p lucidd
# out/ and target/ of the source tree must not be rsynced into the build directory.
LUCIDD_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude out --exclude target

define LUCIDD_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/lucidd \
		$(TARGET_DIR)/usr/bin/lucidd
endef

$(eval $(cargo-package))
