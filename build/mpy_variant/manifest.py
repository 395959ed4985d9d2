# Frozen modules of stubdm's MicroPython unix port (FROZEN_MANIFEST).
# Only what MicroPython's own tree provides: Debian's +ds source package has
# an (almost) empty lib/micropython-lib, so no require() here.
include("$(MPY_DIR)/extmod/asyncio")
