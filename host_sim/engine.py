"""host_sim's guest engine: a real guest under QEMU, stubdm serving its PCI functions.

QEMU runs the guest (TCG here, KVM where real virtualisation exists) with
its own chipset; each PCI function of stubdm's machine is put in front of
the guest through QEMU's vfio-user client, and every config-space and BAR
access becomes the ioreq Xen would send the device model's ioreq server
(PCI_CONFIG, PIO or COPY), answered by the device model in its own process.
QEMU's RAM (DMA_MAP memfds) is the guest RAM behind host_sim's foreign
memory; the device model's INTx levels go to QEMU through the INTx eventfd.
"""
import base64
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from host_sim.qtest_qemu import die_with_parent
from host_sim.hypervisor import DeviceModelGone, DeviceModelHung, SimError, SimHypervisor
from host_sim.scripted import ROOT, dm_command, dm_env
from host_sim import proto, vfio_user
from host_sim.vfio_user import VfioUserServer
from stubdm import abi

EXIT_MARK = b"STUBDM-EXIT="
# Guest PCI slots of stubdm's functions: the DM's own devfn numbering is kept,
# so the INTx the DM raises for device N is the guest's slot N.
DEVFN_PLATFORM = 0x18
DEVFN_PCI_SERIAL = 0x20
# The device model's PIIX3 IDE (its 01.1) in PCI native mode: QEMU's own
# PIIX3 IDE holds the guest's 01.1, so the guest sees it at 05.0.
DEVFN_IDE = 0x09
GUEST_SLOT_IDE = 0x05
# Where host_sim places a BAR itself if QEMU never forwards the guest's BAR
# programming (the guest sees QEMU's own, virtualised BAR registers).
SHADOW_IO = 0xC000
SHADOW_MEM = 0xE0000000

_BAR_REGS = range(0x10, 0x28)
# Linux's bochs DRM driver for the standard VGA, and what it needs, in load order
# (DESIGN.md 15).
BOCHS_MODULES = ("drm", "drm_kms_helper", "ttm", "drm_ttm_helper", "drm_vram_helper", "bochs")


class EngineError(SimError):
    pass


class StubdmFunction:
    """vfio-user back end for one of the device model's PCI functions."""

    def __init__(self, engine, devfn):
        self.engine = engine
        self.hv = engine.hv
        self.devfn = devfn
        self.server = self.hv.server_for_pci(0, devfn >> 3, devfn & 7)
        if self.server is None:
            raise EngineError("the device model serves no function at 00:%02x.%d"
                              % (devfn >> 3, devfn & 7))
        self.bases = {}
        self.bars = self._probe_bars()
        self.msi_cap = self._find_cap(0x05)
        self.msi = None  # (address, data) while the guest has MSI enabled
        self._relay_init()

    def _find_cap(self, want):
        """Config offset of the function's capability `want`, or 0."""
        if not self._cfg(0x06, 2) & 0x10:
            return 0
        at = self._cfg(0x34, 1) & 0xFC
        for _ in range(48):  # a list that loops ends here
            if at < 0x40:
                return 0
            if self._cfg(at, 1) == want:
                return at
            at = self._cfg(at + 1, 1) & 0xFC
        return 0

    def msi_vectors(self):
        return 1 if self.msi_cap else 0

    def _msi_refresh(self):
        cap = self.msi_cap
        flags = self._cfg(cap + 2, 2)
        if not flags & 1:
            self.msi = None
            return
        addr = self._cfg(cap + 4, 4)
        if flags & 0x80:  # 64-bit address
            addr |= self._cfg(cap + 8, 4) << 32
            data = self._cfg(cap + 12, 2)
        else:
            data = self._cfg(cap + 8, 2)
        self.msi = (addr, data)

    def _cfg(self, reg, size, value=None):
        sbdf = abi.pci_sbdf(0, 0, self.devfn >> 3, self.devfn & 7)
        addr = (sbdf << abi.PCI_SBDF_SHIFT) | reg
        is_read = value is None
        data = self.engine.ioreq(self.server, abi.IOREQ_TYPE_PCI_CONFIG, addr,
                                 0 if is_read else value, size, is_read)
        return data & ((1 << (8 * size)) - 1) if is_read else None

    def _probe_bars(self):
        """BAR sizes, found the way firmware finds them (write all ones, read back)."""
        bars = []
        i = 0
        while i < 6:
            reg = 0x10 + 4 * i
            old = self._cfg(reg, 4)
            self._cfg(reg, 4, 0xFFFFFFFF)
            probe = self._cfg(reg, 4)
            self._cfg(reg, 4, old)
            if probe and probe != 0xFFFFFFFF:
                is_io = probe & 1
                mask = probe & (0xFFFFFFFC if is_io else 0xFFFFFFF0)
                size = (~mask & 0xFFFFFFFF) + 1
                if is_io:
                    size &= 0xFFFF
                bars.append((i, size, bool(is_io)))
                if not is_io and (probe & 6) == 4:
                    i += 1  # 64-bit BAR: the next register is its upper half
            i += 1
        return bars

    # ---- the vfio-user back-end interface ----
    def bar_regions(self):
        out = []
        for index, size, is_io in self.bars:
            mm = None if is_io else self._ram_bar(index, size)
            out.append((index, size, is_io) if mm is None else (index, size, is_io, mm))
        return out

    def _ram_bar(self, index, size):
        """The VGA's BAR0 as an mmap-able region: the video RAM the device model
        populated (host_sim's populated pages, in one file), so QEMU maps it into
        the guest and VRAM traffic sends no messages (DESIGN.md 15)."""
        from host_sim.vfio_user import MmapRegion
        from stubdm import layout

        if self.devfn != layout.DEVFN_VGA or index != 0:
            return None
        pop = self.hv.populated
        pages = size // 4096
        for gfn in sorted(pop):
            first = pop[gfn]
            if all(pop.get(gfn + i) == first + i for i in range(pages)):
                return MmapRegion(self.hv.pop_fd, first * 4096)
        self.engine.note("00:02.0 BAR0: no populated video RAM of %d KiB: trapped" % (size >> 10))
        return None

    def config_read(self, offset, size):
        return self._cfg(offset, size)

    def config_write(self, offset, size, value):
        if offset < 0x08 or offset in _BAR_REGS:
            self.bases.clear()  # decoding may have changed
            self._relay_disarm()
        self._cfg(offset, size, value)
        cap = self.msi_cap
        if cap and offset < cap + 16 and cap < offset + size:
            self._msi_refresh()  # what the device model's capability holds now

    def _base(self, index):
        base = self.bases.get(index)
        if base is not None:
            return base
        is_io = None
        size = 0
        for i, s, io in self.bars:
            if i == index:
                is_io, size = io, s
        if is_io is None:
            raise EngineError("no BAR %d" % index)
        reg = 0x10 + 4 * index
        bar = self._cfg(reg, 4)
        cmd = self._cfg(0x04, 2)
        enable = 1 if is_io else 2
        base = bar & (0xFFFFFFFC if is_io else 0xFFFFFFF0)
        if not (cmd & enable) or base == 0:
            # QEMU kept the guest's BAR programming to itself: place the BAR
            # where nothing else is and turn decoding on, as firmware would.
            slot = self.devfn >> 3
            base = SHADOW_IO + slot * 0x100 if is_io else SHADOW_MEM + slot * (16 << 20)
            base = (base + size - 1) & ~(size - 1)
            self._cfg(reg, 4, base)
            self._cfg(0x04, 2, cmd | enable)
            self.engine.note("00:%02x.%d BAR%d placed at %#x for the device model"
                             % (self.devfn >> 3, self.devfn & 7, index, base))
        self.bases[index] = (base, is_io)
        r = self._relay
        if r is not None:  # its plain accesses can go as ioreqs from C now
            r.base[index] = base
            r.type[index] = abi.IOREQ_TYPE_PIO if is_io else abi.IOREQ_TYPE_COPY
        return self.bases[index]

    # ---- the ioreq relay (vfio_user's VfioUserServer calls these) ----
    # A plain BAR access of a BAR whose base is known goes from QEMU's message
    # to its ioreq and back in C (host_sim/vfio_floor/vfu_fast.c's vfu_relay),
    # the same ioreq send_ioreq would write. Whatever is not that simple (no
    # answer in the first wait, other messages, the device model's own
    # requests) comes back here, to send_ioreq's Python and its checks.
    def _relay_init(self):
        ffi = vfio_user._ffi
        self._relay = r = ffi.new("vfu_relay_t *") if ffi is not None else None
        if r is None:
            return
        self._relay_disarm()
        r.max_batch = vfio_user.SPIN_BATCH
        self._relay_key = None  # what r's channel fields were set from
        self._relay_n = self._relay_ns = 0  # what relay_sync counted

    def _relay_disarm(self):
        r = self._relay
        if r is not None:
            for i in range(6):
                r.type[i] = vfio_user._lib.VFU_NO_RELAY

    def relay_ready(self, conn_fd):
        """The relay for this access, or None (then the server asks region_read/write)."""
        engine = self.engine
        if engine.failure is not None:
            return None
        hv, s, r = self.hv, self.server, self._relay
        if s.page is None or not s.enabled:
            return None  # send_ioreq maps it on the first ioreq
        try:
            p, q, h = hv.ioreq_channel(s, 0)
        except DeviceModelGone:
            return None  # send_ioreq raises it, and the run ends
        cfds = hv._cfds.get(h) or hv._cfds_for(h)
        ring = h.conn.irq if h.conn is not None else None
        key = (conn_fd, p, q, h, cfds, ring)
        if key != self._relay_key:
            self._relay_set(r, conn_fd, s, q, h, cfds, ring)
            self._relay_key = key
            self._relay_chan = (p, q)
        return r

    def _relay_set(self, r, conn_fd, s, q, h, cfds, ring):
        from host_sim.hypervisor import _TAKE_MAX, _evtchn_ffi

        ffi = vfio_user._ffi
        hv = self.hv

        def addr(cdata):
            return ffi.cast("void *", int(_evtchn_ffi.cast("uintptr_t", cdata)))

        r.slot = ffi.cast("uint8_t *", addr(hv.ioreq_state(s, 0))) - abi.IOREQ_OFF_FLAGS
        r.evtchn = addr(h.c)
        r.dm_port = q.port
        r.vp_eport = s.vcpu_ports[0]
        r.wait_fds = addr(cfds[0])
        r.wait_nfds = cfds[1]
        r.timeout_ms = hv.first_wait_ms()
        r.taken = ffi.cast("uint32_t *", addr(h._taken))
        r.max_taken = _TAKE_MAX
        # The levels the device model sets in an access are applied before its
        # reply (the relay holds it for us when the ring is not empty).
        if ring is not None:
            r.irq_prod = ffi.cast("uint32_t *", addr(ring.c + proto.IRQ_OFF_PROD))
            r.irq_cons = ffi.cast("uint32_t *", addr(ring.c + proto.IRQ_OFF_CONS))
        else:
            r.irq_prod = r.irq_cons = ffi.NULL
        # The spin for the next access ends when host_sim has work: the
        # handle's kick with ports in it, levels in the ring, any other fd.
        spin = [conn_fd, h.kick_fd, ring.kick_fd if ring is not None else -1]
        spin += [cfds[0][i].fd for i in range(1, cfds[1])]
        self._spin_fds = fds = ffi.new("struct pollfd[]", len(spin))
        for i, fd in enumerate(spin):
            fds[i].fd = fd
            fds[i].events = vfio_user._lib.POLLIN
        r.spin_fds = fds
        r.spin_nfds = len(spin)
        r.spin_ns = self.engine.spin_us * 1000

    def relay_sync(self, r):
        """Count what the relay answered since the last call, as send_ioreq would."""
        n = r.n_reads + r.n_writes + r.n_posted
        d = n - self._relay_n
        if d:
            ns = r.ioreq_ns
            p, q = self._relay_chan
            self.engine.relayed(d, ns - self._relay_ns, p, q)
            self._relay_n, self._relay_ns = n, ns

    def relay_held(self):
        """The relay holds an answered access's reply: the line levels the device
        model set in it take effect first."""
        self.hv.irq_drain()

    def relay_taken(self, r):
        """Apply the line levels the relay's spin saw kicked (it took the kick), and
        serve the notifies it took besides answers (r.taken[0:r.nout])."""
        hv = self.hv
        if hv._irq_rings:
            hv.irq_drain()
        n = r.nout
        if n and self.engine.failure is None:
            r.nout = 0
            self.hv.serve_taken(self._relay_key[3], n)

    def relay_wait(self, acc, r):
        """The relay's ioreq for acc is out, its answer not seen in the first wait:
        wait for it as send_ioreq does; the data."""
        base, _is_io = self.bases[acc.region]
        return self.engine.ioreq_answer_late(self.server, r.type[acc.region],
                                             base + acc.offset, acc.count, r.is_read, r.nout)

    def region_read(self, index, offset, size):
        base, is_io = self._base(index)
        t = abi.IOREQ_TYPE_PIO if is_io else abi.IOREQ_TYPE_COPY
        return self.engine.ioreq(self.server, t, base + offset, 0, size, 1)

    def region_write(self, index, offset, size, value):
        base, is_io = self._base(index)
        t = abi.IOREQ_TYPE_PIO if is_io else abi.IOREQ_TYPE_COPY
        self.engine.ioreq(self.server, t, base + offset, value, size, 0)

    def dma_map(self, iova, size, fd, fd_offset, prot):
        if fd is None:
            return
        try:
            self.hv.add_ram(iova, size, fd, fd_offset)
        except ValueError:
            # Each function's server gets the same maps: the first one wins.
            pass

    def dma_unmap(self, iova, size):
        self.hv.remove_ram(iova, size)


def ide_args(disks, cdroms, pv=True, first_letter=0):
    """The device model's disk arguments, as libxl writes them (DESIGN.md 7),
    plus -ide-native: QEMU reaches the controller only as a PCI function.

    pv (a stub domain, the default): each image is a PV disk of the stub domain
    (xvda, xvdb, ... in order; host_sim's blkback serves it) and the arguments
    name /dev/xvdX, as libxl writes them for a stub domain. Otherwise (a dom0
    device model) they name the image files. Returns (arguments, pv_devices)."""
    from host_sim.backends.blkback import vbd_device

    if not disks and not cdroms:
        return [], []
    args = []
    devices = []
    letters = "abcdefgh"[first_letter:]

    def target(i, path, readonly, cdrom, fmt):
        if not path:
            return ""  # an empty drive: nothing to reach
        if not pv:
            return ",file=%s,format=raw" % path.replace(",", ",,") if cdrom else \
                "file=%s,format=raw" % path.replace(",", ",,")
        devices.append(vbd_device(path, "xvd" + letters[i], readonly=readonly, cdrom=cdrom))
        return (",file=/dev/xvd%s,format=%s" if cdrom else "file=/dev/xvd%s,format=%s") % (
            letters[i], fmt)

    for i, (path, readonly) in enumerate(disks):
        if i > 3:
            raise EngineError("IDE has four drive positions")
        args += ["-drive", "%s,if=ide,index=%d,media=disk,cache=writeback%s"
                 % (target(i, path, readonly, False, "host_device"), i,
                    ",readonly=on" if readonly and not pv else "")]
    for j, path in enumerate(cdroms):
        pos = 2 + j  # libxl puts CD-ROMs on ide.1
        if pos < len(disks) or pos > 3:
            raise EngineError("no IDE position left for CD-ROM %d" % j)
        devid = 5632 + 64 * j  # hdc's xenstore device number, as libxl's ide-DEVNO
        spec = "if=none,readonly=on,id=ide-%d" % devid
        spec += target(len(disks) + j, path, True, True, "host_device")
        args += ["-drive", spec, "-device", "ide-cd,id=ide-%d,drive=ide-%d,bus=ide.%d,unit=%d"
                 % (devid, devid, pos // 2, pos % 2)]
    return args + ["-ide-native"], devices


def ahci_args(disks, cdroms, pv=True):
    """libxl's hdtype="ahci" arguments (DESIGN.md 7): -device ahci,id=ahci0 and per disk
    -drive ...,if=none,id=ahcidisk-N with -device ide-hd,bus=ahci0.N; CD-ROMs stay on
    IDE (libxl's ide-cd). The PV disks are xvda... in that order, as with ide_args."""
    from host_sim.backends.blkback import vbd_device

    if len(disks) > 6:
        raise EngineError("AHCI has six ports")
    args = ["-device", "ahci,id=ahci0"] if disks else []
    devices = []
    for i, (path, readonly) in enumerate(disks):
        if pv:
            devices.append(vbd_device(path, "xvd" + "abcdefgh"[i], readonly=readonly))
            target = "file=/dev/xvd%s,format=host_device" % "abcdefgh"[i]
        else:
            target = "file=%s,format=raw%s" % (path.replace(",", ",,"),
                                               ",readonly=on" if readonly else "")
        args += ["-drive", "%s,if=none,id=ahcidisk-%d,cache=writeback" % (target, i),
                 "-device", "ide-hd,bus=ahci0.%d,unit=0,drive=ahcidisk-%d" % (i, i)]
    cd_args, cd_devices = ide_args([], cdroms, pv=pv, first_letter=len(disks))
    return args + cd_args, devices + cd_devices


def find_kernel():
    k = os.path.join(ROOT, "build", "guest", "vmlinuz")
    i = os.path.join(ROOT, "build", "guest", "initramfs.cpio.gz")
    return (k if os.path.exists(k) else None), (i if os.path.exists(i) else None)


class Engine:
    """One boot: host_sim's hypervisor, the device model, vfio-user servers, QEMU."""

    # us: how long a vfio-user server watches its connection for the guest's
    # next access after answering one, before the loop sleeps in poll (the
    # policy of host_sim's and the device model's event channel spins,
    # EvtchnHandle.spin_us: a wake-up from poll costs about an access here).
    spin_us = 100

    def __init__(self, qemu, kernel, initrd, memory=512, run=None, runtime="cpython",
                 accel="tcg", quiet=True, out=None, timeout=None, dm_extra=(), disks=(),
                 cdroms=(), pv_devices=(), nics=(), hdtype="ide", qmp=None, vnc=None,
                 console_input=False):
        self.qemu = qemu
        self.kernel = kernel
        self.initrd = initrd
        self.memory = memory
        self.run = run
        self.runtime = runtime
        self.accel = accel
        self.quiet = quiet
        self.out = out or sys.stdout.buffer
        self.timeout = timeout
        # disks: (path, readonly) each, the guest's IDE disks from index 0; cdroms:
        # image paths (None: an empty drive) from ide.1 unit 0 on. Both go to the
        # device model as libxl writes them (-drive / -device ide-cd).
        # hdtype "ahci": the disks on AHCI ports instead (libxl's hdtype), CD-ROMs on IDE.
        if hdtype == "ahci":
            drive_args, drive_devices = ahci_args(disks, cdroms)
            self.ide = bool(cdroms)
        else:
            drive_args, drive_devices = ide_args(disks, cdroms)
            self.ide = bool(disks or cdroms)
        self.dm_extra = list(dm_extra) + drive_args
        # PV devices of the stub domain the device model runs as (host_sim/pvenv.py):
        # (type, devid, backend class[, {keyword arguments}]) each.
        self.pv_devices = list(pv_devices) + drive_devices
        self.pvenv = None
        # nics: (model, mac or None) each: the guest's NIC D is the stub domain's vif D,
        # whose netback joins a TAP in this run's own network namespace, where the
        # peer is 10.0.(2+D).2/24.
        self.ns = None
        self.nics = list(nics)
        # qmp: where dom0's vchan-socket-proxy puts the device model's QMP socket.
        self.qmp = qmp
        # vnc: HOST:DISPLAY or unix:PATH: the stub domain's vfb/vkbd, served there,
        # and the guest's standard VGA (libxl's vga="stdvga" line, 16 MiB videoram)
        # drawing into that vfb; the guest loads the bochs DRM stack, so its fbcon
        # is what the VNC client sees.
        self.vnc = vnc
        # console_input: a pipe to the guest's console (.qemu_proc.stdin) when not
        # interactive, so a test can tell a waiting guest to go on.
        self.console_input = console_input
        if vnc and not any(a.split(",")[0] in ("VGA", "std") for a in self.dm_extra):
            self.dm_extra = ["-device", "VGA,vgamem_mb=16"] + self.dm_extra
        self.qmp_proxy = None
        self.failure = None
        self.notes = []
        self.dir = tempfile.mkdtemp(prefix="stubdm-boot-")
        self.hv = None
        self.dm = None
        self.qemu_proc = None
        self.servers = []
        self.msi_dropped = 0  # MSI writes no function matched
        self.ioreqs = 0
        self.output = bytearray()

    def note(self, msg):
        self.notes.append(msg)
        if not self.quiet:
            sys.stderr.write("stubdm-sim: %s\n" % msg)

    def ioreq(self, server, type_, addr, data, size, is_read):
        """One access on the guest's behalf; a dead or hung device model ends the run."""
        if self.failure is not None:
            return (1 << (8 * size)) - 1 if is_read else 0
        try:
            self.ioreqs += 1
            return self.hv.send_ioreq(server, 0, type_, addr, data, size, is_read=is_read)
        except (DeviceModelGone, DeviceModelHung) as e:
            self.failure = e
            return (1 << (8 * size)) - 1 if is_read else 0

    def relayed(self, n, ioreq_ns, p, q):
        """n more accesses answered by a function's relay (ioreq_ns: their ioreq
        round trips' sum): counted as send_ioreq counts its own."""
        self.ioreqs += n
        self.hv.stats["ioreqs"] += n
        self.hv.evtchn.stats["sent"] += n
        p.sent += n
        q.sent += n

    def ioreq_answer_late(self, server, type_, addr, size, is_read, nout):
        """The rest of a relayed access whose answer the relay's first wait did not
        see (SimHypervisor.ioreq_answer_late); as ioreq, a dead or hung device
        model ends the run."""
        if self.failure is not None:
            return (1 << (8 * size)) - 1 if is_read else 0
        hv = self.hv
        try:
            self.ioreqs += 1
            p, q, h = hv.ioreq_channel(server, 0)
            q.sent += 1
            port = server.vcpu_ports[0]
            hv.notified.discard(port)  # as send_ioreq before its raise
            return hv.ioreq_answer_late(server, 0, h, nout,
                                        abi.FLAG_DIR_READ if is_read else 0, type_, addr)
        except (DeviceModelGone, DeviceModelHung) as e:
            self.failure = e
            return (1 << (8 * size)) - 1 if is_read else 0

    # ---- start-up ----
    def start_dm(self):
        from host_sim.pvenv import GUEST_DOMID, PvEnv

        sock = os.path.join(self.dir, "hv.sock")
        if self.nics:
            self._nic_devices()
        self.serial_log = os.path.join(self.dir, "pci-serial.log")
        # As libxl starts a stub domain's device model: every argument in xenstore
        # (<guest vm>/image/dm-argv/NNN), nothing on its command line. COM1 (QEMU's
        # here) gets null, the pci-serial the log: -nodefaults keeps what -serial asks.
        # libxl's fixed lines and order (libxl__build_device_model_args_new, stub
        # domain), then host_sim's pci-serial, the NICs' and disks' lines.
        self.dm_argv = [
            "-xen-domid", str(GUEST_DOMID), "-no-shutdown", "-nodefaults", "-no-user-config",
            "-name", "guest", "-display", "none",
            "-serial", "null", "-serial", "file:" + self.serial_log,
            "-boot", "order=cda", "-smp", "1,maxcpus=1",
        ] + ([] if self.nics else ["-net", "none"]) + [
            "-machine", "xenfv,suppress-vmdesc=on", "-m", str(self.memory),
            "-device", "pci-serial,addr=%d" % (DEVFN_PCI_SERIAL >> 3),
        ] + self.dm_extra
        self.pvenv = PvEnv(self.dir, guest_domid=GUEST_DOMID, dm_argv=self.dm_argv)
        env_extra = self.pvenv.env
        self.hv = SimHypervisor(sock, ram_mib=self.memory, own_ram=False, log=self.note,
                                domid=GUEST_DOMID, dm_domid=self.pvenv.stubdom_domid)
        self.hv.on_intx = self._intx
        self.hv.on_msi = self._msi
        if self.pvenv is not None:
            self.pvenv.attach(self.hv)
            self.pvenv.add_devices(self.pv_devices)
            if self.vnc:
                self.pvenv.add_display(self.vnc)
        if self.ns is not None:
            self._start_peers()
        env = dm_env(sock)
        env.update(env_extra)
        args = dm_command(self.runtime)
        self.dm_log = os.path.join(self.dir, "dm.log")
        with open(self.dm_log, "wb") as err:
            self.dm = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stderr=err,
                                       stdout=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.hv.alive = lambda: self.dm.poll() is None

        def ready():
            return any(s.enabled for s in self.hv.servers.values())

        self.hv.pump_until(ready, "its start-up", timeout=30)
        if self.qmp:
            from host_sim.vchan import VchanSocketProxy

            if self.pvenv is None:
                raise EngineError("--qmp needs the stub domain's xenstore (a PV device)")
            self.qmp_proxy = VchanSocketProxy(
                self.hv, self.pvenv.xenstored.socket_path, self.pvenv.stubdom_domid,
                "%s/device-model/%d/qmp-vchan" % (self.pvenv.paths["stub"], self.hv.domid),
                self.qmp, log=self.note)

    def _nic_devices(self):
        from host_sim.backends.netback import vif_device
        from host_sim.netns import Namespace

        self.ns = Namespace()
        self.peers = []
        for d, (model, mac) in enumerate(self.nics):
            mac = mac or "00:16:3e:00:01:%02x" % d
            self.pv_devices.append(vif_device(self.ns, mac=mac, devid=d,
                                              address="10.0.%d.2/24" % (2 + d)))
            # libxl's two lines for an emulated NIC (libxl_dm.c).
            self.dm_extra += ["-device", "%s,id=nic%d,netdev=net%d,mac=%s" % (model, d, d, mac),
                              "-netdev", "type=tap,id=net%d,ifname=vif%d.%d-emu,br=xenbr0,"
                              "script=no,downscript=no" % (d, 1, d)]

    def _start_peers(self):
        """host_sim/netpeer.py on each NIC's peer address (once its TAP is up)."""
        env_py = [sys.executable, "-m", "host_sim.netpeer"]
        for d in range(len(self.nics)):
            p = self.ns.popen(env_py + ["10.0.%d.2" % (2 + d)], stdout=subprocess.PIPE,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
            if p.stdout.readline().strip() != b"ready":
                raise EngineError("the network peer for NIC %d did not start" % d)
            self.peers.append(p)

    def start_servers(self):
        devfns = [DEVFN_PLATFORM, DEVFN_PCI_SERIAL] + ([DEVFN_IDE] if self.ide else [])
        # The device model's other PCI functions (NICs, ...), where it placed them.
        for srv in self.hv.servers.values():
            for seg, bus, dev, fn in sorted(srv.pcidevs):
                devfn = (dev << 3) | fn
                # The VGA at 02.0 too (QEMU's pc machine leaves slot 2 free
                # with -nodefaults).
                if seg == 0 and bus == 0 and (dev >= 4 or dev == 2) and devfn not in devfns:
                    devfns.append(devfn)
        self.guest_slots = {}
        used = set(d >> 3 for d in devfns if d != DEVFN_IDE)
        for devfn in devfns:
            if devfn == DEVFN_IDE:
                # QEMU's pc machine has its own PIIX in slot 1: ours goes in a free one.
                slot = GUEST_SLOT_IDE
                while slot in used:
                    slot += 1
                used.add(slot)
                self.guest_slots[devfn] = (slot, 0)
            else:
                self.guest_slots[devfn] = (devfn >> 3, devfn & 7)
        for devfn in devfns:
            fn = StubdmFunction(self, devfn)
            path = os.path.join(self.dir, "fn%02x.sock" % devfn)
            srv = VfioUserServer(path, fn, log=self.note, spin_us=self.spin_us)
            self.servers.append((devfn, fn, srv))

    def _msi(self, addr, data):
        """A device model's MSI: the function whose enabled capability holds this
        address and data fires its vector (QEMU sends the guest the message).
        Compared as Xen reads a message (hvm_inject_msi): the address's low 20
        bits (destination, mode) and the data; qemu-xen passes the address as an
        offset in the APIC's MSI window (0x1004 for 0xfee01004)."""
        key = (addr & 0xFFFFF, data & 0xFFFF)
        for _devfn, fn, srv in self.servers:
            if fn.msi is not None and (fn.msi[0] & 0xFFFFF, fn.msi[1]) == key:
                return srv.signal_msi()
        self.msi_dropped += 1
        if self.msi_dropped <= 8:
            self.note("MSI to %#x data %#x matches no function's: dropped" % (addr, data))
        return False

    def _intx(self, dev, intx, level):
        for devfn, _fn, srv in self.servers:
            if devfn >> 3 == dev and intx == 0:
                srv.set_intx(level)

    def qemu_args(self):
        mem = self.memory
        append = "console=ttyS0 panic=-1"
        if self.quiet:
            append += " quiet"
        if any(a.split(",")[0] in ("VGA", "std") for a in self.dm_extra):
            append += " stubdm.modprobe=" + ",".join(BOCHS_MODULES)
        if self.run is not None:
            append += " stubdm.run=" + base64.b64encode(self.run.encode()).decode()
        args = [
            self.qemu,
            "-machine", "pc,accel=%s,memory-backend=mem" % self.accel,
            "-object", "memory-backend-memfd,id=mem,size=%dM,share=on" % mem,
            "-m", "%dM" % mem,
            "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio",
            "-kernel", self.kernel, "-initrd", self.initrd, "-append", append,
        ]
        for devfn, _fn, srv in self.servers:
            slot, fn = self.guest_slots[devfn]
            args += ["-device",
                     '{"driver":"vfio-user-pci","addr":"%02x.%x","socket":'
                     '{"path":"%s","type":"unix"}}' % (slot, fn, srv.path)]
        return args

    # ---- the run ----
    def boot(self):
        """Returns the guest's exit status (run mode) or 0; raises SimError on failure."""
        try:
            self.start_dm()
            self.start_servers()
            interactive = self.run is None and sys.stdin.isatty()
            self.qemu_proc = subprocess.Popen(
                self.qemu_args(),
                stdin=None if interactive else (
                    subprocess.PIPE if self.console_input else subprocess.DEVNULL),
                stdout=None if interactive else subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=not interactive,
                preexec_fn=die_with_parent,
            )
            return self._loop(interactive)
        finally:
            self.close()

    def _loop(self, interactive):
        # The hot path of every guest access: one poll, one handler, nothing
        # rebuilt per round. The fd table is made again only when a server's
        # or host_sim's descriptors change; process exits arrive as pidfds.
        poller = select.poll()
        qout = None if interactive else self.qemu_proc.stdout.fileno()
        if qout is not None:
            os.set_blocking(qout, False)
        exits = {}  # pidfd -> Popen
        for proc in (self.qemu_proc, self.dm):
            if proc is not None:
                try:
                    exits[os.pidfd_open(proc.pid)] = proc
                except (AttributeError, OSError):
                    pass  # no pidfds here: poll() it every round instead
        polled = [p for p in (self.qemu_proc, self.dm) if p is not None
                  and p not in exits.values()]
        changed = [True]

        def fds_changed():
            changed[0] = True

        for _devfn, _fn, srv in self.servers:
            srv.on_fds_changed = fds_changed
        by_fd = {}
        hv_fds = []
        deadline = time.monotonic() + self.timeout if self.timeout else None
        try:
            while True:
                hv_now = self.hv.filenos() if self.hv is not None else []
                if changed[0] or hv_now != hv_fds:
                    changed[0] = False
                    hv_fds = hv_now
                    want = {}
                    for _devfn, _fn, srv in self.servers:
                        for fd in srv.filenos():
                            if fd >= 0:
                                want[fd] = srv
                    # host_sim's own sockets and backends (the device model's
                    # messages, TAPs, xenstore watches) wake us too.
                    for fd in hv_fds:
                        want.setdefault(fd, None)
                    for fd in by_fd:
                        if fd not in want:
                            poller.unregister(fd)
                    for fd in want:
                        if fd not in by_fd:
                            poller.register(fd, select.POLLIN)
                    by_fd = want
                    for fd in exits:
                        poller.register(fd, select.POLLIN)
                    if qout is not None:
                        poller.register(qout, select.POLLIN)
                events = poller.poll(100)
                hv_ready = not events
                exited = False
                for fd, ev in events:
                    srv = by_fd.get(fd, 0)
                    if srv:
                        srv.handle_readable(fd)
                    elif srv is None:
                        hv_ready = True
                    elif fd == qout:
                        self._qemu_output(qout)
                    elif fd in exits:
                        exited = True
                if self.hv is not None and (hv_ready or self.hv._deferred):
                    self.hv.pump(0)  # None: no device model (host_sim/bench.py)
                if self.failure is not None:
                    raise self.failure
                if exited or polled:
                    if self.dm is not None and self.dm.poll() is not None:
                        raise DeviceModelGone("the device model exited with status %d"
                                              % self.dm.returncode)
                    if self.qemu_proc.poll() is not None:
                        if qout is not None:
                            self._qemu_output(qout)
                        return self._result()
                if deadline is not None and time.monotonic() > deadline:
                    raise EngineError("the guest did not finish in %d s" % self.timeout)
        finally:
            for fd in exits:
                os.close(fd)

    def _qemu_output(self, fd):
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.output += chunk
            self.out.write(chunk)
            self.out.flush()

    def _result(self):
        rc = self.qemu_proc.returncode
        if self.run is None:
            return 0
        i = self.output.rfind(EXIT_MARK)
        if i < 0:
            err = self.qemu_proc.stderr.read().decode(errors="replace").strip()
            raise EngineError("the guest stopped without reporting its status (QEMU exit %d)%s"
                              % (rc, ": " + err if err else ""))
        digits = bytearray()
        for c in self.output[i + len(EXIT_MARK):]:
            if not chr(c).isdigit():
                break
            digits.append(c)
        return int(digits or b"1")

    def dm_messages(self):
        try:
            with open(self.dm_log, errors="replace") as f:
                return f.read()
        except (OSError, AttributeError):
            return ""

    def close(self):
        if self.qemu_proc is not None and self.qemu_proc.poll() is None:
            self.qemu_proc.terminate()
            try:
                self.qemu_proc.wait(5)
            except subprocess.TimeoutExpired:
                self.qemu_proc.kill()
                self.qemu_proc.wait()
        for _devfn, _fn, srv in self.servers:
            srv.close()
        if self.qmp_proxy is not None:
            self.qmp_proxy.close()
        if self.pvenv is not None:
            self.pvenv.close()
        for p in getattr(self, "peers", ()):
            p.kill()
            p.wait()
        if self.ns is not None:
            self.ns.close()
        if self.hv is not None:
            self.hv.close()
        if self.dm is not None:
            if isinstance(self.failure, DeviceModelHung):
                self.dm.kill()  # it answers nothing: it will not exit by itself
            try:
                self.dm.wait(5)
            except subprocess.TimeoutExpired:
                self.dm.send_signal(signal.SIGKILL)
                self.dm.wait()
        self.messages = self.dm_messages()
        try:
            with open(self.serial_log, "rb") as f:
                self.pci_serial_output = f.read()
        except (OSError, AttributeError):
            self.pci_serial_output = b""
        shutil.rmtree(self.dir, ignore_errors=True)
