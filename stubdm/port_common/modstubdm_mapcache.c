// _stubdm_mapcache: the mapcache C core (stubdm/mapcache/mapcache.c) inside
// MicroPython, as a user C module (DESIGN.md 6, 9).
//
// First cut: the unix port has no foreign-memory handle yet, so this only
// proves that mapcache.c compiles and links into MicroPython and lets tests
// reach it:
//   version()                         API version of this module (int)
//   footprint(bucket_shift, max_buckets)
//                                     heap bytes of such a cache (int)
//   map_errno(gpa, length)            errno of mapcache_map() on a cache with
//                                     no handle: RAM [0, 4 GiB), 1 MiB buckets
//   ENOSYS, EINVAL, EFAULT, ENOMEM    errno values (MicroPython's errno module
//                                     lacks ENOSYS, PORTABLE_PYTHON.md 12)
//   PAGE_SHIFT, MIN_BUCKET_SHIFT, MAX_BUCKET_SHIFT, MAX_RAM_RANGES
// Guest memory will be handed to Python as
// mp_obj_new_memoryview('B' | MP_OBJ_ARRAY_TYPECODE_FLAG_RW, n, ptr) once the
// real glue provides a handle.
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "py/obj.h"
#include "py/runtime.h"
#include "py/mperrno.h"

#include "mapcache.h"

#define STUBDM_MAPCACHE_API_VERSION (1)

// Weak stand-ins for Xen's foreign-memory calls, so that the port links with
// nothing from Xen. The real implementation (Xen's libxenforeignmemory, or
// host_sim's) overrides them when linked in.
__attribute__((weak)) void *xenforeignmemory_map(xenforeignmemory_handle *fmem, uint32_t dom,
    int prot, size_t pages, const xen_pfn_t arr[], int err[]) {
    errno = ENOSYS;
    return NULL;
}

__attribute__((weak)) int xenforeignmemory_unmap(xenforeignmemory_handle *fmem, void *addr,
    size_t pages) {
    errno = ENOSYS;
    return -1;
}

static mp_obj_t stubdm_mapcache_version(void) {
    return MP_OBJ_NEW_SMALL_INT(STUBDM_MAPCACHE_API_VERSION);
}
static MP_DEFINE_CONST_FUN_OBJ_0(stubdm_mapcache_version_obj, stubdm_mapcache_version);

static mp_obj_t stubdm_mapcache_footprint(mp_obj_t shift_in, mp_obj_t max_in) {
    mp_int_t shift = mp_obj_get_int(shift_in);
    mp_int_t max_buckets = mp_obj_get_int(max_in);
    if (shift < 0 || max_buckets < 0) {
        mp_raise_OSError(MP_EINVAL);
    }
    mapcache_t *mc = mapcache_new(NULL, 0, (unsigned)shift, (unsigned)max_buckets);
    if (mc == NULL) {
        mp_raise_OSError(errno);
    }
    size_t n = mapcache_footprint(mc);
    mapcache_free(mc);
    return mp_obj_new_int_from_uint(n);
}
static MP_DEFINE_CONST_FUN_OBJ_2(stubdm_mapcache_footprint_obj, stubdm_mapcache_footprint);

static mp_obj_t stubdm_mapcache_map_errno(mp_obj_t gpa_in, mp_obj_t len_in) {
    // 64-bit guest addresses arrive as (possibly big) ints.
    uint64_t gpa = (uint64_t)mp_obj_int_get_uint_checked(gpa_in);
    size_t len = (size_t)mp_obj_int_get_uint_checked(len_in);
    mapcache_t *mc = mapcache_new(NULL, 0, 20, 4);
    if (mc == NULL) {
        mp_raise_OSError(errno);
    }
    if (mapcache_add_ram(mc, 0, (uint64_t)1 << 32) != 0) {
        int e = errno;
        mapcache_free(mc);
        mp_raise_OSError(e);
    }
    errno = 0;
    void *p = mapcache_map(mc, gpa, len, 0);
    int e = p == NULL ? errno : 0;
    mapcache_free(mc);
    return MP_OBJ_NEW_SMALL_INT(e);
}
static MP_DEFINE_CONST_FUN_OBJ_2(stubdm_mapcache_map_errno_obj, stubdm_mapcache_map_errno);

static const mp_rom_map_elem_t stubdm_mapcache_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__stubdm_mapcache) },
    { MP_ROM_QSTR(MP_QSTR_version), MP_ROM_PTR(&stubdm_mapcache_version_obj) },
    { MP_ROM_QSTR(MP_QSTR_footprint), MP_ROM_PTR(&stubdm_mapcache_footprint_obj) },
    { MP_ROM_QSTR(MP_QSTR_map_errno), MP_ROM_PTR(&stubdm_mapcache_map_errno_obj) },
    { MP_ROM_QSTR(MP_QSTR_ENOSYS), MP_ROM_INT(ENOSYS) },
    { MP_ROM_QSTR(MP_QSTR_EINVAL), MP_ROM_INT(EINVAL) },
    { MP_ROM_QSTR(MP_QSTR_EFAULT), MP_ROM_INT(EFAULT) },
    { MP_ROM_QSTR(MP_QSTR_ENOMEM), MP_ROM_INT(ENOMEM) },
    { MP_ROM_QSTR(MP_QSTR_PAGE_SHIFT), MP_ROM_INT(MAPCACHE_PAGE_SHIFT) },
    { MP_ROM_QSTR(MP_QSTR_MIN_BUCKET_SHIFT), MP_ROM_INT(MAPCACHE_MIN_BUCKET_SHIFT) },
    { MP_ROM_QSTR(MP_QSTR_MAX_BUCKET_SHIFT), MP_ROM_INT(MAPCACHE_MAX_BUCKET_SHIFT) },
    { MP_ROM_QSTR(MP_QSTR_MAX_RAM_RANGES), MP_ROM_INT(MAPCACHE_MAX_RAM_RANGES) },
};
static MP_DEFINE_CONST_DICT(stubdm_mapcache_globals, stubdm_mapcache_globals_table);

const mp_obj_module_t stubdm_mapcache_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&stubdm_mapcache_globals,
};

MP_REGISTER_MODULE(MP_QSTR__stubdm_mapcache, stubdm_mapcache_user_cmodule);
