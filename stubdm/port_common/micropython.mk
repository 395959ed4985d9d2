# stubdm/port_common: MicroPython user C modules shared by stubdm's ports
# (the unix port now, the MiniOS port later). MicroPython's make includes
# every $(USER_C_MODULES)/*/micropython.mk, so the build passes
# USER_C_MODULES=<repo>/stubdm (absolute) and this file is found as
# stubdm/port_common/micropython.mk.
#
# _stubdm_mapcache: MicroPython face of the mapcache C core
# (stubdm/mapcache/mapcache.c, also compiled into the cffi glue on CPython).

STUBDM_PORT_COMMON_DIR := $(USERMOD_DIR)
STUBDM_MAPCACHE_DIR := $(abspath $(USERMOD_DIR)/../mapcache)

# Where xenforeignmemory.h is: Debian's libxen-dev puts it in /usr/include;
# a MiniOS build passes the Xen tree's tools/include instead.
STUBDM_XEN_INCLUDE ?= /usr/include

# Scanned for qstrs (it defines the module).
SRC_USERMOD_C += $(STUBDM_PORT_COMMON_DIR)/modstubdm_mapcache.c
# Plain C library code, not scanned for qstrs.
SRC_USERMOD_LIB_C += $(STUBDM_MAPCACHE_DIR)/mapcache.c

CFLAGS_USERMOD += -I$(STUBDM_MAPCACHE_DIR) -I$(STUBDM_XEN_INCLUDE)
