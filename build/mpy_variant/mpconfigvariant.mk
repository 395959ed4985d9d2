# stubdm's variant of MicroPython's unix port; see mpconfigvariant.h.
# Options that need third-party sources or libraries missing from Debian's
# +ds tree (ssl with mbedTLS, btree, ffi with libffi) are switched off on the
# make command line by SConstruct, so that they show in its build signature.

FROZEN_MANIFEST ?= $(VARIANT_DIR)/manifest.py
