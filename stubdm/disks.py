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
    try:
        return FileDisk(path, readonly=readonly or cdrom, cdrom=cdrom)
    except OSError as e:
        raise DriveError("cannot open %s: %s" % (path, e))
