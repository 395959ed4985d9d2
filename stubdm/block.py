# What a storage controller (IDE, AHCI) sees of a disk or CD-ROM: sector I/O
# that completes later. In a stub domain the disk is blkfront
# (stubdm/frontends/blkfront.py) talking to dom0's blkback; tests use
# MemoryDisk. Controllers never know which.
#
#   disk.sectors        size in 512-byte sectors (0: no medium)
#   disk.readonly       writes fail with EROFS
#   disk.cdrom          a CD-ROM drive (ATAPI); removable media
#   disk.media_changed  set by the disk when the medium changed; the
#                       controller reports it (UNIT ATTENTION) and clears it
#   disk.submit(op, sector, views, done)
#       op: READ, WRITE or FLUSH; views: memoryviews (guest memory pinned by
#       GuestMemory.lock, or buffers) that together hold the data, each a
#       multiple of 512 bytes (FLUSH: none). done(status) runs once, later,
#       from the event loop, or before submit returns: controllers handle both.
#       status: OK, or an errno value (EIO, EROFS, ENOMEDIUM, EINVAL): never a
#       silent success. Several requests may be in flight at once; they
#       complete in any order.
#   disk.max_sectors    the most one submit takes (controllers split above it)
#   disk.on_change      None, or a callable the disk calls when its size or
#                       medium changed (media change on a CD-ROM)
#   disk.batching       True while the disk runs the done callbacks of completions
#                       that arrived together (blkfront: one event's responses);
#                       what is submitted meanwhile goes out when the batch ends
#   disk.on_batch_end   None, or a callable the controller sets: the disk calls it
#                       after a batch's last done callback, so that the controller
#                       reports the batch and raises its interrupt once, not per request
#   disk.poll()         optional: run now, as one batch, the completions that have
#                       already arrived (their event not yet handled); True if any
from stubdm.compat import const

READ = const(0)
WRITE = const(1)
FLUSH = const(3)
OK = const(0)
# errno values (MicroPython's errno module lacks some: PORTABLE_PYTHON.md 12).
EIO = const(5)
EINVAL = const(22)
EROFS = const(30)
ENOMEDIUM = const(123)
SECTOR = const(512)


class MemoryDisk:
    """A disk in a bytearray: completes at once, or later if defer is given
    (defer(fn) queues fn, as the event loop would)."""

    def __init__(self, data, readonly=False, cdrom=False, defer=None, max_sectors=2048):
        self.data = data
        self.sectors = len(data) // SECTOR
        self.readonly = readonly
        self.cdrom = cdrom
        self.media_changed = False
        self.max_sectors = max_sectors
        self.on_change = None
        self.batching = False  # each completion is its own (deferred or at once)
        self.on_batch_end = None
        self.defer = defer
        self.fail = None  # an errno to fail every request with (tests)
        self.submitted = 0

    def submit(self, op, sector, views, done):
        self.submitted += 1
        status = self._do(op, sector, views)
        if self.defer is None:
            done(status)
        else:
            self.defer(lambda: done(status))

    def _do(self, op, sector, views):
        if self.fail is not None:
            return self.fail
        if op == FLUSH:
            return OK
        n = 0
        for v in views:
            n += len(v)
        if n % SECTOR or sector < 0 or sector * SECTOR + n > len(self.data) or not self.sectors:
            return EINVAL if self.sectors else ENOMEDIUM
        pos = sector * SECTOR
        if op == READ:
            for v in views:
                v[:] = self.data[pos:pos + len(v)]
                pos += len(v)
            return OK
        if op == WRITE:
            if self.readonly:
                return EROFS
            for v in views:
                self.data[pos:pos + len(v)] = v
                pos += len(v)
            return OK
        return EINVAL

    def change_medium(self, data):
        """Swap the medium (None: eject)."""
        self.data = data if data is not None else bytearray()
        self.sectors = len(self.data) // SECTOR
        self.media_changed = True
        if self.on_change is not None:
            self.on_change()
