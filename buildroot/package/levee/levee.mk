################################################################################
#
# levee
#
################################################################################

LEVEE_VERSION = 0.1.0
LEVEE_LICENSE = AGPL-3.0-only
LEVEE_LICENSE_FILES = LICENSE
LEVEE_PREBUILT = $(call qstrip,$(BR2_PACKAGE_LEVEE_PREBUILT))

ifneq ($(LEVEE_PREBUILT),)

# A prebuilt static binary: nothing to compile.
LEVEE_SITE = $(dir $(LEVEE_PREBUILT))
LEVEE_SITE_METHOD = local

define LEVEE_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(LEVEE_PREBUILT) $(TARGET_DIR)/usr/bin/levee
endef

$(eval $(generic-package))

else

# The cargo workspace this BR2_EXTERNAL tree is part of (its parent directory).
LEVEE_SITE = $(BR2_EXTERNAL_LEVEE_PATH)/..
LEVEE_SITE_METHOD = local
LEVEE_SUBDIR = appliance/levee
# Not the build outputs next to the sources.
LEVEE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude='/target*' --exclude=/image/out --exclude=/bench/out
LEVEE_CARGO_BUILD_OPTS = --locked

$(eval $(cargo-package))

endif
