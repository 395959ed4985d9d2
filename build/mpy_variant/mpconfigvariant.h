// stubdm's variant of MicroPython's unix port (DESIGN.md 9).
// Built by SConstruct: make -C build/micropython/src/ports/unix
//   VARIANT=stubdm VARIANT_DIR=<repo>/build/mpy_variant ...
//
// Same feature set as the port's `standard` variant, spelled out: the
// EXTRA_FEATURES ROM level (bytearray, memoryview, struct, ...) and
// arbitrary-precision ints (MPZ) for 64-bit guest addresses. The frozen
// manifest differs from `standard`: it needs nothing from micropython-lib,
// which Debian's +ds source tree does not ship.

// Set base feature level.
#define MICROPY_CONFIG_ROM_LEVEL (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

// Big ints: 64-bit guest physical addresses and ioreq data.
#define MICROPY_LONGINT_IMPL (MICROPY_LONGINT_IMPL_MPZ)

// The unix port's common extras (os, time, select, ...); run from
// ports/unix, so the port directory is on the include path.
#include "variants/mpconfigvariant_common.h"
