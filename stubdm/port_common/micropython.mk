# stubdm/port_common: MicroPython user C modules shared by stubdm's ports
# (the unix port now, the MiniOS port later). MicroPython's make includes
# every $(USER_C_MODULES)/*/micropython.mk, so the build passes
# USER_C_MODULES=<repo>/stubdm (absolute) and this file is found as
# stubdm/port_common/micropython.mk.
#
# _xenglue (modstubdm_hyp.c): the device model's C glue, Xen's user-library
# API (xendevicemodel, xenforeignmemory, xenevtchn) and the mapcache core
# (stubdm/mapcache/mapcache.c); on CPython the same API comes from the cffi
# module through stubdm/glue_cffi.py.
#
# STUBDM_XEN_LIBS says which implementation of Xen's API is linked in:
#   sim   host_sim's (host_sim/libsim/hostsim_libs.c, over a unix socket and
#         memfds): the unix port for tests and development (default)
#   xen   Xen's own libraries (-lxendevicemodel -lxenforeignmemory
#         -lxenevtchn): a unix-port device model in dom0
#   none  nothing: the port provides them (MiniOS links its own)

STUBDM_PORT_COMMON_DIR := $(USERMOD_DIR)
STUBDM_MAPCACHE_DIR := $(abspath $(USERMOD_DIR)/../mapcache)
STUBDM_LIBSIM_DIR := $(abspath $(USERMOD_DIR)/../../host_sim/libsim)

STUBDM_XEN_LIBS ?= sim

# Where Xen's headers (xendevicemodel.h, ...) are: Debian's libxen-dev puts
# them in /usr/include, which the compiler searches anyway (GCC ignores a -I
# of a system directory, so no system header changes place); a MiniOS build
# passes the Xen tree's tools/include instead.
STUBDM_XEN_INCLUDE ?= /usr/include

# Scanned for qstrs (it defines the module).
SRC_USERMOD_C += $(STUBDM_PORT_COMMON_DIR)/modstubdm_hyp.c
# Plain C library code, not scanned for qstrs.
SRC_USERMOD_LIB_C += $(STUBDM_MAPCACHE_DIR)/mapcache.c

CFLAGS_USERMOD += -I$(STUBDM_MAPCACHE_DIR) -I$(STUBDM_XEN_INCLUDE)

# xenstore is Debian's libxenstore on the host in both cases (under host_sim
# it follows XENSTORED_PATH to the device model's domain's socket); MiniOS
# has its own xs_* (lib/xs.c over its xenbus).
ifeq ($(STUBDM_XEN_LIBS),sim)
SRC_USERMOD_LIB_C += $(STUBDM_LIBSIM_DIR)/hostsim_libs.c
# libxenctrl's populate call and the VRAM dm_ops (stubdm/devices/vga.py)
SRC_USERMOD_LIB_C += $(STUBDM_LIBSIM_DIR)/hostsim_xenlibs.c
CFLAGS_USERMOD += -I$(STUBDM_LIBSIM_DIR) -DSTUBDM_GLUE_SIM
LDFLAGS_USERMOD += -lxenstore
else ifeq ($(STUBDM_XEN_LIBS),xen)
LDFLAGS_USERMOD += -lxendevicemodel -lxenforeignmemory -lxenevtchn -lxengnttab -lxenctrl \
	-lxenstore
endif
