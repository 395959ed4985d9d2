"""QEMU's own ISA device models driven through qtest (host_sim.qtest_qemu).

Needs QEMU >= 10.1 with the qtest accelerator: build/provision_qemu.sh makes
build/qemu-system-x86_64; otherwise $STUBDM_QEMU or qemu-system-x86_64 on
PATH.  Skips (with the reason) only when none of these is suitable.
"""

import os
import signal

import pytest

from host_sim.qtest_qemu import (QemuQtest, QtestError, QtestFail,
                                 QtestTimeout, find_qemu, qemu_missing_reason)

QEMU = find_qemu()
pytestmark = pytest.mark.skipif(QEMU is None, reason=qemu_missing_reason() or "no QEMU")

COM1 = 0x3F8
RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
LSR_THRE_TEMT = 0x60
MCR_OUT2 = 0x08
IER_THRI = 0x02
COM1_IRQ = 4

# -serial null: the machine's default 16550 at 0x3f8, IRQ 4, null backend.
SERIAL_DEFAULT = ["-serial", "null"]
# The same, spelled as an explicit device.
SERIAL_DEVICE = ["-chardev", "null,id=com1",
                 "-device", "isa-serial,chardev=com1,iobase=0x3f8,irq=4"]


@pytest.fixture(params=["serial-null", "isa-serial-device"])
def q(request):
    args = SERIAL_DEFAULT if request.param == "serial-null" else SERIAL_DEVICE
    with QemuQtest(args, qemu=QEMU) as qq:
        yield qq


def test_uart_lsr_after_reset(q):
    assert q.inb(COM1 + LSR) == LSR_THRE_TEMT


def test_uart_scratch_round_trip(q):
    for v in (0x00, 0x5A, 0xA5, 0xFF):
        q.outb(COM1 + SCR, v)
        assert q.inb(COM1 + SCR) == v


def test_uart_thre_interrupt_raises_isa_irq4(q):
    # ISA IRQs are observed at the IOAPIC's inputs: ISA IRQ n == input n.
    q.irq_intercept_in("ioapic")
    assert q.get_irq(COM1_IRQ) is False
    q.outb(COM1 + MCR, MCR_OUT2)
    q.outb(COM1 + IER, IER_THRI)
    assert q.get_irq(COM1_IRQ) is True
    # Reading IIR reports (and clears) the THRE interrupt.
    assert q.inb(COM1 + IIR) & 0x0F == 0x02
    assert q.get_irq(COM1_IRQ) is False
    # Re-enabling THRI with THR empty raises it again; IER=0 lowers it.
    q.outb(COM1 + IER, 0)
    q.outb(COM1 + IER, IER_THRI)
    assert q.get_irq(COM1_IRQ) is True
    q.outb(COM1 + IER, 0)
    assert q.get_irq(COM1_IRQ) is False
    assert (COM1_IRQ, True) in q.irq_log


def test_i8042_self_test(q):
    status = q.inb(0x64)
    assert status & 0x01 == 0        # output buffer empty after reset
    q.outb(0x64, 0xAA)               # controller self-test
    assert q.inb(0x64) & 0x01 == 1   # result waiting
    assert q.inb(0x60) == 0x55
    assert q.inb(0x64) & 0x01 == 0


def test_memory_round_trip(q):
    data = bytes(range(256)) * 3
    q.memwrite(0x100000, data)
    assert q.memread(0x100000, len(data)) == data
    q.writeb(0x2000, 0x12)
    q.writew(0x2002, 0x3456)
    q.writel(0x2004, 0x789ABCDE)
    q.writeq(0x2008, 0x0123456789ABCDEF)
    assert q.readb(0x2000) == 0x12
    assert q.readw(0x2002) == 0x3456
    assert q.readl(0x2004) == 0x789ABCDE
    assert q.readq(0x2008) == 0x0123456789ABCDEF
    assert q.memread(0x2008, 8) == bytes.fromhex("efcdab8967452301")


def test_pit_irq0_and_clock_step():
    with QemuQtest(SERIAL_DEFAULT, qemu=QEMU) as q:
        q.irq_intercept_in("ioapic")
        q.outb(0x43, 0x34)           # channel 0, lobyte/hibyte, mode 2
        q.outb(0x40, 0xE8)
        q.outb(0x40, 0x03)           # count 1000 (~838 us)
        times = [q.clock_step() for _ in range(4)]   # to the next deadline
        assert times == sorted(times) and times[0] < times[-1]
        assert q.clock_step(1000) == times[-1] + 1000
        assert (0, True) in q.irq_log and (0, False) in q.irq_log


def test_fail_reply_raises():
    with QemuQtest(SERIAL_DEFAULT, qemu=QEMU) as q:
        with pytest.raises(QtestFail):
            q.command("no_such_command")
        assert q.inb(COM1 + LSR) == LSR_THRE_TEMT   # still usable


def test_close_terminates_qemu():
    q = QemuQtest(SERIAL_DEFAULT, qemu=QEMU)
    proc = q.proc
    assert proc.poll() is None
    q.close()
    assert proc.poll() is not None
    q.close()                                      # idempotent
    with pytest.raises(QtestError):
        q.inb(COM1 + LSR)


def test_bad_arguments_report_qemu_stderr():
    with pytest.raises(QtestError) as e:
        QemuQtest(["-device", "no-such-device-xyz"], qemu=QEMU)
    assert "no-such-device-xyz" in str(e.value)


def test_timeout_when_qemu_hangs():
    with QemuQtest(SERIAL_DEFAULT, qemu=QEMU) as q:
        q.timeout = 0.5
        os.kill(q.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(QtestTimeout) as e:
                q.inb(COM1 + LSR)
            assert "no reply to 'inb 0x3fd'" in str(e.value)
            with pytest.raises(QtestError):        # stream is out of step
                q.inb(COM1 + LSR)
        finally:
            os.kill(q.proc.pid, signal.SIGCONT)
