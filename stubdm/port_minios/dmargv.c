// dm-argv: check libxl's one-key-per-argument layout before use (dmargv.h).
#include <stdio.h>
#include <string.h>

#include "dmargv.h"

int dmargv_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t k;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return 0;  // continuation byte first, or 0xc0/0xc1/0xf5.. (overlong or too big)
        }
        if (n - i - 1 < k) {
            return 0;  // truncated sequence
        }
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (p[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff))
            || (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;  // overlong, beyond Unicode, or a surrogate
        }
        i += k + 1;
    }
    return 1;
}

// The key's index, or -1 if it is not 1..DMARGV_MAX_KEY_LEN decimal digits.
static long key_index(const char *key) {
    size_t n = strlen(key);
    if (n == 0 || n > DMARGV_MAX_KEY_LEN) {
        return -1;
    }
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (key[i] < '0' || key[i] > '9') {
            return -1;
        }
        v = v * 10 + (key[i] - '0');
    }
    return v;
}

// A key as it can be printed: at most 16 characters, non-printing as '?'.
static void printable(const char *s, char *out, size_t outlen) {
    size_t i = 0;
    for (; s[i] != '\0' && i + 1 < outlen && i < 16; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[i] = '\0';
}

int dmargv_build(const dmargv_list_t *list, const char **argv, size_t argv_max, char *err,
    size_t errlen) {
    // slot[i]: the entry for index i (0..DMARGV_MAX_ARGS), or NULL.
    static const dmargv_entry_t *slot[DMARGV_MAX_ARGS + 1];
    char shown[20];
    if (list->n > DMARGV_MAX_ARGS) {
        snprintf(err, errlen, "dm-argv has more than %d entries", DMARGV_MAX_ARGS);
        return -1;
    }
    memset(slot, 0, sizeof(slot));
    long top = 0;
    for (size_t i = 0; i < list->n; i++) {
        const dmargv_entry_t *e = &list->entry[i];
        long idx = key_index(e->key);
        if (idx < 0) {
            printable(e->key, shown, sizeof(shown));
            snprintf(err, errlen, "dm-argv key '%s' is not an argument number", shown);
            return -1;
        }
        if (idx > DMARGV_MAX_ARGS) {
            snprintf(err, errlen, "dm-argv key %ld is beyond the %d-argument limit", idx,
                DMARGV_MAX_ARGS);
            return -1;
        }
        if (slot[idx] != NULL) {
            snprintf(err, errlen, "dm-argv index %ld appears twice ('%s' and '%s')", idx,
                slot[idx]->key, e->key);
            return -1;
        }
        if (e->value_len > DMARGV_MAX_ARG_LEN) {
            snprintf(err, errlen, "dm-argv/%s is %lu bytes long (limit %d)", e->key,
                (unsigned long)e->value_len, DMARGV_MAX_ARG_LEN);
            return -1;
        }
        if (strlen(e->value) != e->value_len) {
            snprintf(err, errlen, "dm-argv/%s holds a NUL byte", e->key);
            return -1;
        }
        if (!dmargv_utf8_valid(e->value, e->value_len)) {
            snprintf(err, errlen, "dm-argv/%s is not valid UTF-8", e->key);
            return -1;
        }
        slot[idx] = e;
        if (idx > top) {
            top = idx;
        }
    }
    // Arguments are 1..top, every one present; 0 is a program name, dropped.
    size_t argc = 0;
    for (long i = 1; i <= top; i++) {
        if (slot[i] == NULL) {
            snprintf(err, errlen, "dm-argv has a gap: %03ld is missing (highest is %03ld)", i,
                top);
            return -1;
        }
        if (argc >= argv_max) {
            snprintf(err, errlen, "dm-argv has more than %lu arguments",
                (unsigned long)argv_max);
            return -1;
        }
        argv[argc++] = slot[i]->value;
    }
    return (int)argc;
}
