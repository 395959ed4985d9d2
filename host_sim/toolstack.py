"""What libxl (Xen 4.17-4.21) writes to xenstore for an HVM guest whose device
model runs in a stub domain, written through a dom0 client (host_sim/xs.py).

Sources: tools/libs/light/libxl_create.c (libxl__domain_make), libxl_dom.c
(libxl__build_post), libxl_dm.c (libxl__spawn_stub_dm, libxl__write_stub_dmargs)
and libxl_device.c (libxl__device_generic_add). Permissions are libxl's:
  roperm  [n0, r<domid>]  dom0 owns, the domain reads
  rwperm  [n<domid>]      the domain owns
  noperm  [n0]            dom0 only
"""
import errno
import uuid as _uuid


def roperm(domid):
    return ["n0", "r%d" % domid]


def rwperm(domid):
    return ["n%d" % domid]


NOPERM = ["n0"]


def mknod(xs, path, perms, tx=0):
    """libxl__xs_mknod: an empty node, then its permissions."""
    xs.write(path, b"", tx)
    xs.set_perms(path, perms, tx)


def write_list(xs, path, items, tx=0, perms=None, first=1):
    """A list as libxl writes dm-argv: path/001, path/002, ... ("%03d")."""
    if perms is not None:
        mknod(xs, path, perms, tx)
    for i, v in enumerate(items, first):
        xs.write("%s/%03d" % (path, i), v, tx)


def transaction(xs, body):
    """Run body(tx) in a transaction, again on EAGAIN, as libxl does."""
    while True:
        tx = xs.transaction_start()
        try:
            r = body(tx)
        except BaseException:
            xs.transaction_end(tx, abort=True)
            raise
        if xs.transaction_end(tx):
            return r


def domain_make(xs, domid, name, uuid, hvm):
    """libxl__domain_make's transaction: /local/domain/<id>, /vm/<uuid>, /libxl/<id>."""
    dom, vm, lx = "/local/domain/%d" % domid, "/vm/%s" % uuid, "/libxl/%d" % domid
    ro, rw = roperm(domid), rwperm(domid)

    def body(t):
        for p, perms in ((dom, ro), (vm, ro), (lx, NOPERM)):
            try:
                xs.rm(p, t)  # libxl ignores the result (ENOENT on a fresh store)
            except OSError:
                pass
            mknod(xs, p, perms, t)
        mknod(xs, lx + "/device", NOPERM, t)
        xs.write(dom + "/vm", vm, t)
        xs.write(dom + "/name", name, t)  # libxl__domain_rename
        xs.write(vm + "/name", name, t)
        for k in ("cpu", "memory", "device"):
            mknod(xs, "%s/%s" % (dom, k), ro, t)
        mknod(xs, dom + "/device/suspend/event-channel", rw, t)
        mknod(xs, dom + "/control", ro, t)
        if hvm:
            mknod(xs, dom + "/hvmloader", ro, t)
        feats = ["shutdown", "feature-poweroff", "feature-reboot", "feature-suspend"]
        if hvm:
            feats += ["feature-s3", "feature-s4"]
        for k in feats + ["sysrq"]:
            mknod(xs, "%s/control/%s" % (dom, k), rw, t)
        for k in ("data", "drivers", "feature", "attr", "error"):
            mknod(xs, "%s/%s" % (dom, k), rw, t)
        xs.write(vm + "/uuid", uuid, t)
        xs.write(vm + "/name", name, t)
        xs.write(dom + "/control/platform-feature-multiprocessor-suspend", "1", t)
        xs.write(dom + "/control/platform-feature-xs_reset_watches", "1", t)
        xs.write(lx + "/type", "hvm" if hvm else "pv", t)
    transaction(xs, body)
    return dom, vm


def build_post(xs, domid, memkb, vcpus, store_port, store_mfn, videoram_kb=0):
    """libxl__build_post: memory, domid, store and cpu keys, then INTRODUCE."""
    dom = "/local/domain/%d" % domid

    def body(t):
        ents = [("memory/static-max", memkb), ("memory/target", memkb),
                ("memory/videoram", videoram_kb), ("domid", domid),
                ("store/port", store_port), ("store/ring-ref", store_mfn)]
        ents += [("cpu/%d/availability" % i, "online") for i in range(vcpus)]
        for k, v in ents:
            xs.write("%s/%s" % (dom, k), str(v), t)
    transaction(xs, body)
    xs.introduce(domid, store_mfn, store_port)


def write_hvm_domain(xs, guest_domid, name, uuid, stubdom_domid, dm_argv=(),
                     stub_uuid=None, memkb=131072, vcpus=1, stub_memkb=131072,
                     store_port=1, bios="seabios"):
    """The guest and its stub domain, as libxl lays them out, both introduced;
    the stub domain gets SET_TARGET over the guest. dm_argv (a list, without
    argv[0]) goes to <guest vm>/image/dm-argv/NNN. Returns the paths."""
    if stub_uuid is None:
        stub_uuid = str(_uuid.uuid4())  # libxl makes a fresh one for the stub domain
    gdom, gvm = domain_make(xs, guest_domid, name, uuid, hvm=True)
    build_post(xs, guest_domid, memkb, vcpus, store_port, 0xFEFFF)
    sdom, svm = domain_make(xs, stubdom_domid, name + "-dm", stub_uuid, hvm=False)
    build_post(xs, stubdom_domid, stub_memkb, 1, store_port, 0xFEFFF)
    xs.write("/libxl/%d/dm-version" % guest_domid, "qemu-xen")

    def dmargs(t):  # libxl__write_stub_dmargs, the Linux-stub-domain form
        write_list(xs, gvm + "/image/dm-argv", list(dm_argv), t, perms=roperm(stubdom_domid))
    transaction(xs, dmargs)
    xs.write(gdom + "/image/device-model-domid", str(stubdom_domid))
    xs.write(sdom + "/target", str(guest_domid))
    xs.write(gdom + "/hvmloader/bios", bios)
    xs.write(gdom + "/hvmloader/allow-memory-relocate", "0")
    xs.set_target(stubdom_domid, guest_domid)
    dm = "%s/device-model/%d" % (sdom, guest_domid)

    def dmdir(t):
        xs.mkdir(dm, t)
        xs.set_perms(dm, ["n%d" % stubdom_domid, "r%d" % guest_domid], t)
    transaction(xs, dmdir)
    return {"guest": gdom, "guest_vm": gvm, "stub": sdom, "stub_vm": svm,
            "dm_argv": gvm + "/image/dm-argv", "device_model": dm}


def frontend_path(frontend_domid, kind, devid):
    return "/local/domain/%d/device/%s/%d" % (frontend_domid, kind, devid)


def backend_path(backend_domid, frontend_domid, kind, devid):
    return "/local/domain/%d/backend/%s/%d/%d" % (backend_domid, kind, frontend_domid, devid)


def add_device(xs, backend_domid, frontend_domid, kind, devid, backend_keys=None,
               frontend_keys=None):
    """libxl__device_generic_add: both halves of a PV device in one transaction.
    The frontend dir is the frontend's with read for the backend, the backend
    dir the backend's with read for the frontend. libxl's own keys (state 1 =
    XenbusStateInitialising, online, the -id keys) are added unless given.
    Returns (frontend path, backend path)."""
    fe, be = frontend_path(frontend_domid, kind, devid), \
        backend_path(backend_domid, frontend_domid, kind, devid)
    lx = "/libxl/%d/device/%s/%d" % (frontend_domid, kind, devid)
    fperms = ["n%d" % frontend_domid, "r%d" % backend_domid]
    bperms = ["n%d" % backend_domid, "r%d" % frontend_domid]
    back = {"frontend-id": str(frontend_domid), "online": "1", "state": "1"}
    back.update(backend_keys or {})
    front = {"backend-id": str(backend_domid), "state": "1"}
    front.update(frontend_keys or {})

    def body(t):
        _rm_ok(xs, lx, t)  # libxl__xs_rm_checked: ENOENT is fine
        xs.write(lx + "/frontend", fe, t)
        xs.write(lx + "/backend", be, t)
        _rm_ok(xs, fe, t)
        xs.mkdir(fe, t)
        xs.set_perms(fe, fperms, t)
        xs.write(fe + "/backend", be, t)
        for k, v in front.items():  # libxl__xs_writev_perms
            xs.write("%s/%s" % (fe, k), v, t)
            xs.set_perms("%s/%s" % (fe, k), fperms, t)
        _rm_ok(xs, be, t)
        xs.mkdir(be, t)
        xs.set_perms(be, bperms, t)
        xs.write(be + "/frontend", fe, t)
        for k, v in back.items():  # libxl__xs_writev: keys inherit the dir's perms
            xs.write("%s/%s" % (be, k), v, t)
        for k, v in back.items():  # libxl keeps its own copy of the backend keys
            xs.write("%s/%s" % (lx, k), v, t)
    transaction(xs, body)
    return fe, be


def _rm_ok(xs, path, tx):
    try:
        xs.rm(path, tx)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
