################################################################################
#
# levee
#
################################################################################

LEVEE_VERSION = 0.1.0
LEVEE_LICENSE = AGPL-3.0-only
LEVEE_PREBUILT = $(call qstrip,$(BR2_PACKAGE_LEVEE_PREBUILT))

ifneq ($(LEVEE_PREBUILT),)

# A prebuilt static binary: nothing to compile. Only the binary is copied from its directory
# (cargo's release directory also holds gigabytes of intermediate files).
LEVEE_SITE = $(patsubst %/,%,$(dir $(LEVEE_PREBUILT)))
LEVEE_SITE_METHOD = local
LEVEE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--include='/$(notdir $(LEVEE_PREBUILT))' --exclude='*'

define LEVEE_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/$(notdir $(LEVEE_PREBUILT)) $(TARGET_DIR)/usr/bin/levee
endef

$(eval $(generic-package))

else

# The cargo workspace this BR2_EXTERNAL tree is part of (its parent directory).
LEVEE_SITE = $(BR2_EXTERNAL_LEVEE_PATH)/..
LEVEE_SITE_METHOD = local
LEVEE_SUBDIR = appliance/levee
# Not the build outputs next to the sources.
LEVEE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude='/target*' --exclude=/image/out --exclude=/bench/out

# A local site is rsynced, not downloaded, so the cargo infrastructure's download-time
# vendoring never runs and its offline build would find no crates. Vendor here instead, once
# host-rustc is built (this step needs network access), the way
# support/download/cargo-post-process does.
define LEVEE_CARGO_VENDOR
	mkdir -p $(@D)/.cargo $(BR_CARGO_HOME)
	cd $(@D) && $(HOST_MAKE_ENV) CARGO_HOME=$(BR_CARGO_HOME) \
		flock $(BR_CARGO_HOME)/.br-lock \
		cargo vendor --manifest-path $(LEVEE_SUBDIR)/Cargo.toml --locked VENDOR \
		>$(@D)/.cargo/config.toml
endef
LEVEE_PRE_CONFIGURE_HOOKS += LEVEE_CARGO_VENDOR

# The workspace's target directory is at its root. Installing the binary the build step made
# avoids "cargo install", which would compile it a second time.
LEVEE_PROFILE = $(if $(BR2_ENABLE_DEBUG),debug,release)
define LEVEE_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/$(LEVEE_PROFILE)/levee \
		$(TARGET_DIR)/usr/bin/levee
endef

$(eval $(cargo-package))

endif
