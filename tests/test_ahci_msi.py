# AHCI's MSI capability (Ahci(msi=...)), as QEMU's ich9-ahci has it: MSI at 0x80
# (one vector, 64-bit), then the SATA capability at 0xA8. Off by default: until the
# hypervisor side delivers MSIs a guest must not be offered one. With it enabled an
# interrupt is one message per rise of the HBA's interrupt condition (and one more
# when the handler's acknowledgement leaves something pending), INTx stays low.
import pytest

from host_sim.fuzz import FakeGuestMemory
from stubdm import block, pci
from stubdm.devices import ahci as H
from tests.test_ahci_coalesce import BUF, CLB, FB, P, guest_handler, issue_reads, sector_data

ADDR, DATA = 0xFEE01000, 0x4031  # LAPIC 1, fixed, vector 0x31


class Bus:
    def __init__(self):
        self.edges = []

    def set_intx(self, fn, level):
        self.edges.append(level)

    def bar_changed(self, *args):
        pass


def machine(msi=True, enable=True):
    mem = FakeGuestMemory(64 << 20)
    later = []
    data = bytearray(8 * 512 * 8)
    for tag in range(8):
        data[4096 * tag:4096 * (tag + 1)] = sector_data(8 * tag, 4096)
    disk = block.MemoryDisk(data, defer=later.append)
    sent = []
    hba = H.Ahci(mem, [disk], msi=(lambda a, d: sent.append((a, d))) if msi else None)
    bus = Bus()
    hba.attached(bus, 0x20)
    hba.config_write(0x04, 2, 0x0006)
    if msi and enable:
        hba.config_write(H.MSI_ADDR_LO, 4, ADDR)
        hba.config_write(H.MSI_ADDR_HI, 4, 0)
        hba.config_write(H.MSI_DATA, 2, DATA)
        hba.config_write(H.MSI_FLAGS, 2, H.MSI_FLAGS_ENABLE)
    hba.reg_write(H.HBA_GHC, H.GHC_AE | H.GHC_IE)
    hba.reg_write(P + H.P_CLB, CLB)
    hba.reg_write(P + H.P_FB, FB)
    hba.reg_write(P + H.P_IE, H.IE_MASK)
    hba.reg_write(P + H.P_CMD, H.CMD_FRE | H.CMD_ST)
    hba.reg_write(P + H.P_IS, 0xFFFFFFFF)
    hba.reg_write(H.HBA_IS, 0xFFFFFFFF)
    assert sent == ([(ADDR, DATA)] if msi and enable else [])  # the signature FIS's
    del sent[:]

    def complete(n=None):
        todo = later[:n] if n is not None else list(later)
        del later[:len(todo)]
        for f in todo:
            f()
    return mem, hba, bus, sent, complete


def caps(hba):
    out = []
    off = hba.config_read(pci.CAPABILITY_LIST, 1)
    while off:
        out.append((off, hba.config_read(off, 1)))
        off = hba.config_read(off + 1, 1)
    return out


def test_no_msi_offered_by_default():
    _mem, hba, _bus, _sent, _c = machine(msi=False)
    assert not hba.config_read(pci.STATUS, 2) & pci.STS_CAP_LIST
    assert caps(hba) == [] and not hba.msi_enabled()


def test_capabilities_as_ich9():
    _mem, hba, _bus, _sent, _c = machine(enable=False)
    assert hba.config_read(pci.STATUS, 2) & pci.STS_CAP_LIST
    assert caps(hba) == [(0x80, 0x05), (0xA8, 0x12)]
    assert hba.config_read(H.MSI_FLAGS, 2) == 0x0080  # 64-bit, one vector, off
    assert hba.config_read(0xA8 + 2, 2) == 0x0010 and hba.config_read(0xA8 + 4, 4) == 0x48
    # The guest writes only the enable bit, the address (dword aligned) and the data.
    hba.config_write(H.MSI_CAP, 4, 0xFFFFFFFF)
    hba.config_write(H.MSI_ADDR_LO, 4, 0xFFFFFFFF)
    hba.config_write(H.MSI_DATA, 4, 0xFFFFFFFF)
    hba.config_write(0xA8, 4, 0)
    assert hba.config_read(H.MSI_CAP, 4) == 0x0081A805
    assert hba.config_read(H.MSI_ADDR_LO, 4) == 0xFFFFFFFC
    assert hba.config_read(H.MSI_DATA, 2) == 0xFFFF
    assert caps(hba) == [(0x80, 0x05), (0xA8, 0x12)]
    hba.reset()
    assert hba.config_read(H.MSI_FLAGS, 2) == 0x0080 and hba.config_read(H.MSI_ADDR_LO, 4) == 0


def test_a_batch_is_one_message_and_intx_stays_low():
    mem, hba, bus, sent, complete = machine()
    issue_reads(mem, hba, range(4))
    assert sent == []
    complete()  # the four complete
    assert sent == [(ADDR, DATA)] and bus.edges == []
    assert hba.reg_read(P + H.P_SACT) == 0
    st, sact = guest_handler(hba)
    assert st & H.IS_SDBS and sact == 0
    assert sent == [(ADDR, DATA)]  # nothing left pending: no second message
    for tag in range(4):
        assert mem.read(BUF + 4096 * tag, 4096) == sector_data(8 * tag, 4096)
    # The next completion is the next message.
    issue_reads(mem, hba, [5])
    complete()
    assert sent == [(ADDR, DATA)] * 2 and bus.edges == []


def test_pending_after_the_acknowledgement_is_a_new_message():
    mem, hba, bus, sent, complete = machine()
    issue_reads(mem, hba, [0, 1])
    complete(1)
    assert sent == [(ADDR, DATA)]
    # The handler reads HBA IS, then tag 1 completes, then the handler acknowledges.
    irq = hba.reg_read(H.HBA_IS)
    st = hba.reg_read(P + H.P_IS)
    hba.reg_write(P + H.P_IS, st)
    complete()
    assert len(sent) == 1  # still in the handler: the condition never fell
    hba.reg_write(H.HBA_IS, irq)
    assert sent == [(ADDR, DATA)] * 2  # an edge for what the handler did not see
    assert hba.reg_read(P + H.P_IS) & H.IS_SDBS and hba.reg_read(P + H.P_SACT) == 0


def test_no_message_without_bus_mastering_and_intx_when_msi_is_off():
    mem, hba, bus, sent, complete = machine()
    issue_reads(mem, hba, [0])
    hba.config_write(0x04, 2, 0x0002)  # bus master off before the completion
    complete()
    assert sent == [] and bus.edges == []
    hba.config_write(0x04, 2, 0x0006)
    hba.config_write(H.MSI_FLAGS, 2, 0)  # MSI off: the pending interrupt is INTx now
    assert bus.edges == [1] and sent == []


def test_save_restore_refuses_the_other_kind():
    _m, with_msi, _b, _s, _c = machine()
    _m, without, _b, _s, _c = machine(msi=False)
    for src, dst in ((with_msi, without), (without, with_msi)):
        with pytest.raises(ValueError, match="MSI capability"):
            dst.load_state(src.state())
    _m, other, _b, sent, _c = machine(enable=False)
    other.load_state(with_msi.state())
    assert other.msi_enabled() and other.config_read(H.MSI_ADDR_LO, 4) == ADDR


def test_a_refused_message_is_logged_and_the_port_serves_on():
    mem, hba, bus, sent, complete = machine()

    def refuse(addr, data):
        raise OSError(22, "Invalid argument")  # Xen: a delivery mode it does not take

    hba.msi = refuse
    n = hba.msi_sent
    hba.config_write(H.MSI_DATA, 2, 0x0731)  # delivery mode 7 (ExtINT)
    issue_reads(mem, hba, [0])
    complete()
    assert hba.msi_sent == n + 1 and hba.reg_read(P + H.P_SACT) == 0
    guest_handler(hba)
    issue_reads(mem, hba, [1])
    complete()
    assert hba.msi_sent == n + 2 and hba.reg_read(P + H.P_SACT) == 0
    assert mem.read(BUF + 4096, 4096) == sector_data(8, 4096)
