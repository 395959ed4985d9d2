# A BlockDevice (stubdm/block.py) over a host file or block device: what a
# device model in dom0 (or a test) opens for `-drive file=PATH`. Requests
# complete at once, before submit returns. Portable: open/seek/readinto/write
# only, so MicroPython's unix port runs it too.
from stubdm import block

try:
    import os as _os

    _fsync = getattr(_os, "fsync", None)
except ImportError:
    _fsync = None


class FileDisk:
    def __init__(self, path, readonly=False, cdrom=False, max_sectors=2048):
        self.path = path
        self.readonly = readonly
        self.cdrom = cdrom
        self.media_changed = False
        self.on_change = None
        self.max_sectors = max_sectors
        self.f = None
        self.sectors = 0
        self._open(path)

    def _open(self, path):
        # Read-write when allowed, as QEMU opens an image; "r+b" never truncates.
        self.f = open(path, "rb" if self.readonly else "r+b")
        self.f.seek(0, 2)
        self.sectors = self.f.tell() // block.SECTOR
        self.path = path

    def submit(self, op, sector, views, done):
        done(self._do(op, sector, views))

    def _do(self, op, sector, views):
        f = self.f
        if f is None or not self.sectors:
            return block.ENOMEDIUM
        if op == block.FLUSH:
            if self.readonly:
                return block.OK
            try:
                f.flush()
                if _fsync is not None:
                    _fsync(f.fileno())
            except OSError:
                return block.EIO
            return block.OK
        n = 0
        for v in views:
            n += len(v)
        if n % block.SECTOR or sector < 0 or sector + n // block.SECTOR > self.sectors:
            return block.EINVAL
        if op == block.WRITE and self.readonly:
            return block.EROFS
        if op not in (block.READ, block.WRITE):
            return block.EINVAL
        try:
            f.seek(sector * block.SECTOR)
            for v in views:
                if op == block.READ:
                    got = f.readinto(v)
                    if got is None or got < len(v):
                        # A file that shrank under us: what is missing reads as zeros.
                        got = got or 0
                        v[got:] = bytes(len(v) - got)
                else:
                    f.write(v)
        except OSError:
            return block.EIO
        return block.OK

    def change(self, path):
        """Swap the medium (a CD-ROM's): path None ejects."""
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None
        self.sectors = 0
        if path:
            self._open(path)
        self.media_changed = True
        if self.on_change is not None:
            self.on_change()

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None


class EmptyDrive:
    """A removable drive with no medium (`-drive if=none,...` without file=)."""

    def __init__(self, cdrom=True):
        self.sectors = 0
        self.readonly = True
        self.cdrom = cdrom
        self.media_changed = False
        self.on_change = None
        self.max_sectors = 2048
        self.path = None

    def submit(self, op, sector, views, done):
        done(block.ENOMEDIUM)
