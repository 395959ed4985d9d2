// _stubdm_port: what the port knows about itself, for figures and tests.
//   platform()   "minios" or "hostsim"
//   heap()       (heap bytes, peak used, peak live after a collection, collections)
#include "py/gc.h"
#include "py/obj.h"
#include "py/runtime.h"

#include "stubdm_port.h"

static mp_obj_t stubdm_port_platform(void) {
    #ifdef STUBDM_PLATFORM_MINIOS
    return MP_OBJ_NEW_QSTR(MP_QSTR_minios);
    #else
    return MP_OBJ_NEW_QSTR(MP_QSTR_hostsim);
    #endif
}
static MP_DEFINE_CONST_FUN_OBJ_0(stubdm_port_platform_obj, stubdm_port_platform);

static mp_obj_t stubdm_port_heap(void) {
    gc_info_t info;
    gc_info(&info);
    size_t peak = stubdm_port_stats.peak_used > info.used ? stubdm_port_stats.peak_used : info.used;
    mp_obj_t t[4] = {
        mp_obj_new_int_from_uint(info.total),
        mp_obj_new_int_from_uint(peak),
        mp_obj_new_int_from_uint(stubdm_port_stats.peak_live),
        mp_obj_new_int_from_uint(stubdm_port_stats.collections),
    };
    return mp_obj_new_tuple(4, t);
}
static MP_DEFINE_CONST_FUN_OBJ_0(stubdm_port_heap_obj, stubdm_port_heap);

static const mp_rom_map_elem_t stubdm_port_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__stubdm_port) },
    { MP_ROM_QSTR(MP_QSTR_platform), MP_ROM_PTR(&stubdm_port_platform_obj) },
    { MP_ROM_QSTR(MP_QSTR_heap), MP_ROM_PTR(&stubdm_port_heap_obj) },
};
static MP_DEFINE_CONST_DICT(stubdm_port_globals, stubdm_port_globals_table);

const mp_obj_module_t stubdm_port_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&stubdm_port_globals,
};

MP_REGISTER_MODULE(MP_QSTR__stubdm_port, stubdm_port_module);
