# A removable drive's medium slot: what a CD-ROM drive (stubdm/devices/ata.py)
# is given as its disk (the stubdm/block.py contract), with the disk inside it
# taken out (QMP eject) or another put in (blockdev-change-medium). The disk
# that was named at start (the stub domain's vbd, through blkfront) stays the
# slot's source: a change of its medium (its backend's params, the xenstore
# path) reaches the drive while it is inserted, and on_source_change (QMP's
# fdsets) hears of it in any case.
from stubdm import block


class Medium:
    def __init__(self, disk):
        self.cdrom = True
        self.readonly = True
        self.on_change = None  # the drive's
        self.on_source_change = None  # (source disk) -> None: the QMP server's
        self.media_changed = False
        self.disk = None
        self.source = disk
        self.locked = False
        if disk is not None:
            disk.on_change = self._source_changed
            self.disk = disk
            self.media_changed = bool(disk.media_changed)
            disk.media_changed = False

    @property
    def sectors(self):
        return self.disk.sectors if self.disk is not None else 0

    @property
    def max_sectors(self):
        return self.disk.max_sectors if self.disk is not None else 2048

    def submit(self, op, sector, views, done):
        if self.disk is None:
            done(block.ENOMEDIUM)
            return
        self.disk.submit(op, sector, views, done)

    def _changed(self):
        self.media_changed = True
        if self.on_change is not None:
            self.on_change()

    def _source_changed(self):
        src = self.source
        if src is not None:
            src.media_changed = False
        if self.disk is src:
            self._changed()
        if self.on_source_change is not None:
            self.on_source_change(src)

    def has_medium(self):
        return self.disk is not None

    def eject(self):
        """The tray opens and the medium is gone (QMP eject)."""
        if self.disk is None:
            return
        self.disk = None
        self._changed()

    def insert(self, disk):
        """disk goes in (QMP blockdev-change-medium): a new medium for the guest."""
        if disk is not self.source and disk is not None:
            disk.on_change = self._changed_if_in(disk)
        self.disk = disk
        self._changed()

    def _changed_if_in(self, disk):
        def changed():
            disk.media_changed = False
            if self.disk is disk:
                self._changed()
        return changed
