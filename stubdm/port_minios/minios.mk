# PLATFORM=minios: the port linked with MiniOS into a stub-domain image
# (DESIGN.md 8), included by this folder's Makefile. UNTESTED: MiniOS is not
# packaged anywhere the machines this project is developed on reach; the same
# port's C code is built and tested there as PLATFORM=hostsim.
#
# The shape is that of Xen's own stub domains (stubdom/Makefile in Xen's
# tree): the app's objects are compiled with MiniOS's flags against newlib,
# gathered into one relocatable object, and MiniOS's make links it:
#   make -C $(MINIOS_ROOT) OBJ_DIR=... APP_OBJS=<app object> MINIOS_CONFIG=minios.cfg
# with Xen's libraries for MiniOS (xenevtchn, xenforeignmemory,
# xendevicemodel, xencall, xengnttab, xentoolcore, xentoollog) linked in by
# MiniOS's Makefile when minios.cfg sets CONFIG_XC=y, from the paths below.
#
# Variables (make or scons arguments):
#   MINIOS_ROOT     a MiniOS tree (required)
#   XEN_ROOT        a Xen tree whose stubdom build has run (make -C stubdom
#                   build of the libraries and newlib: cross-root-x86_64 and
#                   libs-x86_64); default $(MINIOS_ROOT)/../..  (MiniOS
#                   checked out as xen/extras/mini-os, as Xen's build does)
#   XEN_INCLUDE     Xen's tools/include (xendevicemodel.h, ...) for MiniOS
#                   (default $(XEN_ROOT)/tools/include)
#   NEWLIB_INCLUDE  newlib's headers built for MiniOS
#                   (default $(XEN_ROOT)/stubdom/cross-root-x86_64/x86_64-xen-elf/include)
#   XEN_LIBS_DIR    where stubdom's build put the libraries
#                   (default $(XEN_ROOT)/stubdom/libs-x86_64)
#   MINIOS_CFLAGS   the whole set of app compiler flags, if the defaults
#                   below do not fit (Xen's stubdom/Makefile computes them as
#                   TARGET_CPPFLAGS + TARGET_CFLAGS)
# Output: $(BUILD)/stubdm-port-minios.gz, a PV kernel for the stub domain
# (libxl: device_model_stubdomain_override=1 with this image as the stub
# domain's kernel).

# (MINIOS_ROOT, XEN_ROOT, XEN_INCLUDE, ... are set by the Makefile, before
# MicroPython's py.mk reads the user C modules that need XEN_INCLUDE.)

# What MiniOS's own Config.mk gives an app on x86-64 PV: no red zone (event
# upcalls run on the same stack), no SSE in kernel mode, freestanding
# except for newlib, no stack protector or PIC.
MINIOS_CFLAGS ?= \
	-D__MINIOS__ -DHAVE_LIBC -D__XEN_TOOLS__ \
	-isystem $(MINIOS_OBJ_DIR)/include \
	-isystem $(MINIOS_ROOT)/include \
	-isystem $(MINIOS_ROOT)/include/posix \
	-isystem $(MINIOS_ROOT)/include/x86 \
	-isystem $(MINIOS_ROOT)/include/x86/x86_64 \
	-isystem $(NEWLIB_INCLUDE) \
	-isystem $(shell $(CC) -print-file-name=include) \
	-m64 -mno-red-zone -fno-reorder-blocks -fno-asynchronous-unwind-tables \
	-fno-stack-protector -fno-pic -fno-builtin -nostdinc

CFLAGS += -DSTUBDM_PLATFORM_MINIOS $(MINIOS_CFLAGS)
# newlib's headers trip warnings the host's glibc does not.
CFLAGS += -Wno-error

MINIOS_APP = $(BUILD)/stubdm-port-app.o

all: $(BUILD)/stubdm-port-minios.gz

# MiniOS's include/mini-os and include/xen links, needed before any app
# object compiles.
$(MINIOS_OBJ_DIR)/.links:
	$(Q)mkdir -p $(MINIOS_OBJ_DIR)
	$(Q)$(MAKE) -C $(MINIOS_ROOT) OBJ_DIR=$(MINIOS_OBJ_DIR) XEN_ROOT=$(XEN_ROOT) links
	$(Q)touch $@

$(OBJ): | $(MINIOS_OBJ_DIR)/.links

# One relocatable object: the app MiniOS links (APP_OBJS).
$(MINIOS_APP): $(OBJ)
	$(ECHO) "LINK $@ (relocatable MiniOS app)"
	$(Q)$(LD) -r -o $@ $^

$(BUILD)/stubdm-port-minios.gz: $(MINIOS_APP) $(PORT_DIR)/minios.cfg
	$(ECHO) "LINK MiniOS image"
	$(Q)$(MAKE) -C $(MINIOS_ROOT) \
		OBJ_DIR=$(MINIOS_OBJ_DIR) XEN_ROOT=$(XEN_ROOT) \
		MINIOS_CONFIG=$(PORT_DIR)/minios.cfg \
		APP_OBJS=$(MINIOS_APP) \
		TOOLCORE_PATH=$(XEN_LIBS_DIR)/toolcore TOOLLOG_PATH=$(XEN_LIBS_DIR)/toollog \
		EVTCHN_PATH=$(XEN_LIBS_DIR)/evtchn GNTTAB_PATH=$(XEN_LIBS_DIR)/gnttab \
		CALL_PATH=$(XEN_LIBS_DIR)/call FOREIGNMEMORY_PATH=$(XEN_LIBS_DIR)/foreignmemory \
		DEVICEMODEL_PATH=$(XEN_LIBS_DIR)/devicemodel CTRL_PATH=$(XEN_LIBS_DIR)/ctrl \
		GUEST_PATH=$(XEN_LIBS_DIR)/guest
	$(Q)cp $(MINIOS_OBJ_DIR)/mini-os.gz $@
	$(Q)$(SIZE) $(MINIOS_OBJ_DIR)/mini-os
