"""What libxl does over QMP, for the tests: its CD-ROM change for a stub domain
(tools/libs/light/libxl_disk.c, cdrom_insert and its callbacks), with a
qemu.qmp client on the socket dom0's vchan-socket-proxy serves."""
import asyncio


def find_fdset(fdsets, devid):
    """query_fdsets_find_fdset: the fdset whose fd's opaque is stub-devid:<devid>."""
    needle = "stub-devid:%d" % devid
    for fs in fdsets:
        for fd in fs["fds"]:
            if fd.get("opaque") == needle:
                return fs["fdset-id"]
    return None


async def cdrom_insert(qmp, write_params, devid, path, timeout=20.0):
    """libxl's sequence for a stub domain's CD: eject {id: ide-N}; query-fdsets and
    remove-fd of the old medium's; the stub domain's vbd gets the new params (libxl
    removes and re-adds it; host_sim's blkback follows a params write); query-fdsets
    again until the stub domain has offered the new one; then blockdev-change-medium
    with /dev/fdset/M and format host_device (none for an empty drive)."""
    qid = "ide-%d" % devid
    await qmp.execute("eject", {"id": qid})
    old = find_fdset(await qmp.execute("query-fdsets"), devid)
    if old is not None:
        await qmp.execute("remove-fd", {"fdset-id": old})
    write_params(path or "")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        new = find_fdset(await qmp.execute("query-fdsets"), devid)
        if new is not None:
            break
        if loop.time() > deadline:
            raise AssertionError("the stub domain offered no fdset for %s" % qid)
        await asyncio.sleep(0.2)  # libxl's retry timer
    if path:
        await qmp.execute("blockdev-change-medium",
                          {"id": qid, "filename": "/dev/fdset/%d" % new,
                           "format": "host_device"})
    return new
