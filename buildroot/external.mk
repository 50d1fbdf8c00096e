# The Lucid external tree: our packages. Board facts live in ../board/*.toml, shared with
# the Debian-based image build (image/xtask); see docs/image.md.
include $(sort $(wildcard $(BR2_EXTERNAL_LUCID_PATH)/package/*/*.mk))
