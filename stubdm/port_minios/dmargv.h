// dm-argv: the device model's arguments as libxl leaves them in xenstore,
// one key per argument, <vm>/image/dm-argv/NNN (DESIGN.md 7; libxl writes
// "%03d" from 001, argument 0 being the program name it does not write).
//
// xenstore is written by the toolstack, but a stub domain treats every value
// it reads as untrusted: dmargv_build() checks the whole set before any of
// it reaches the device model, and a set that is not well formed stops the
// stub domain with one clear message (main.c), never a hang.
// Plain C99, no MicroPython API: shared by both platforms and testable on
// the host build.
#ifndef STUBDM_PORT_DMARGV_H
#define STUBDM_PORT_DMARGV_H

#include <stddef.h>

// Limits: far above what libxl writes for one guest (a few dozen arguments,
// each well under a page), well below what could hurt a 32 MiB stub domain.
#define DMARGV_MAX_ARGS (256)
#define DMARGV_MAX_ARG_LEN (4096)
#define DMARGV_MAX_KEY_LEN (8)

typedef struct {
    const char *key;    // the key's last component, e.g. "001"
    const char *value;  // its value, NUL terminated
    size_t value_len;   // bytes before the terminator (an embedded NUL is malformed)
} dmargv_entry_t;

typedef struct {
    size_t n;
    dmargv_entry_t entry[DMARGV_MAX_ARGS + 1];  // one over: "too many" is seen
} dmargv_list_t;

// Checks the raw entries and puts the values in argument order into argv
// (argv_max slots). Returns the number of arguments, or -1 with a one-line
// reason in err: too many entries, a key that is not a decimal index, a
// duplicate index, a gap, an over-long or empty-key entry, a value that is
// not UTF-8 or holds a NUL. Index 000, if present, is a program name and is
// dropped, as libxl's own layout has none.
int dmargv_build(const dmargv_list_t *list, const char **argv, size_t argv_max, char *err,
    size_t errlen);

// Strict UTF-8 (no overlong forms, no surrogates, at most U+10FFFF).
int dmargv_utf8_valid(const char *s, size_t n);

#endif // STUBDM_PORT_DMARGV_H
