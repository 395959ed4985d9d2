# Where a `-drive file=PATH` comes from. In dom0 (and under host_sim's tests)
# PATH is a host file or block device, opened directly; in a stub domain the
# guest's disks are the stub domain's own PV disks (/dev/xvdX), which
# blkfront reaches. Every drive the device model emulates is opened here.
from stubdm.filedisk import EmptyDrive, FileDisk


class DriveError(Exception):
    pass


def open_drive(path, readonly, cdrom, context=None):
    """A BlockDevice (stubdm/block.py) for `path` (None or "": no medium).

    context: what the device model knows about its surroundings (its PV
    frontend bus, ...), for paths that name PV disks; unused for files.
    """
    if not path:
        if not cdrom:
            raise DriveError("a hard disk needs a file")
        return EmptyDrive()
    from stubdm.frontends.blkfront import vbd_devid

    devid = vbd_devid(path)
    if devid is not None:
        return _pv_disk(path, devid, readonly, cdrom, context)
    try:
        return FileDisk(path, readonly=readonly or cdrom, cdrom=cdrom)
    except OSError as e:
        raise DriveError("cannot open %s: %s" % (path, e))


def _pv_disk(path, devid, readonly, cdrom, context):
    """/dev/xvdX: the stub domain's own PV disk of that name, through blkfront. The
    device model waits for it to connect before the guest runs (context.needed_pv)."""
    bus = getattr(context, "pv", None)
    if bus is None:
        raise DriveError("%s is a PV disk, and there is no xenstore to find it" % path)
    fe = None
    for n in _stub_devids(devid):
        fe = bus.device("vbd", n)
        if fe is not None:
            break
    if fe is None:
        raise DriveError("%s: the stub domain has no vbd %d (device/vbd/%d)"
                         % (path, devid, devid))
    # What the controller must know before the backend tells us: the drive's kind.
    fe.cdrom = fe.cdrom or cdrom
    fe.readonly = fe.readonly or readonly or cdrom
    needed = getattr(context, "needed_pv", None)
    if needed is not None and fe not in needed:
        needed.append(fe)
    return fe


def _stub_devids(devid):
    """The vbd numbers /dev/xvdX may be in a stub domain. libxl gives the stub domain
    the guest's disks with the guest's own vdev (libxl__spawn_stub_dm: dm_config->disks
    = guest_config->disks) and names them /dev/xvd('a' + disk index) in dm-argv, as
    Linux's xen-blkfront names them: xvdX itself, hdX (IDE majors 3 and 22, 64 minors
    a unit) or sdX (major 8, 16 minors a disk)."""
    i = (devid - (202 << 8)) >> 4  # the letter, from vbd_devid's xvd encoding
    out = [devid]
    if i < 4:
        out.append(((3 if i < 2 else 22) << 8) | ((i & 1) << 6))
    if i < 16:
        out.append((8 << 8) | (i << 4))
    return out
