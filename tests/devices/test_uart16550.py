# Tests of the 16550A core, driven the way a guest driver drives it. Each
# test names the PC16550D datasheet section or QEMU hw/char/serial.c
# behaviour it pins.
import random

from stubdm.devices.uart16550 import Uart16550
from stubdm.irq import IrqLine

RBR, THR, DLL, IER, DLM, IIR, FCR, LCR, MCR, LSR, MSR, SCR = 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7


class Sink:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data


class Recorder:
    def __init__(self):
        self.edges = []

    def __call__(self, level):
        self.edges.append(level)


def make():
    rec = Recorder()
    irq = IrqLine(rec)
    chardev = Sink()
    u = Uart16550(irq, chardev=chardev)
    return u, irq, chardev, rec


def rd(u, off):
    return u.read(off, 1)


def wr(u, off, val):
    u.write(off, 1, val)


def test_reset_values():
    # Datasheet Table III (reset states); QEMU serial_reset: LSR THRE|TEMT,
    # IIR "no interrupt", MCR OUT2, MSR CTS|DSR|DCD, divisor 12 (9600 baud).
    u, irq, _, _ = make()
    assert rd(u, LSR) == 0x60
    assert rd(u, IIR) == 0x01
    assert rd(u, IER) == 0x00
    assert rd(u, LCR) == 0x00
    assert rd(u, MCR) == 0x08
    assert rd(u, MSR) == 0xB0
    assert rd(u, SCR) == 0x00
    assert irq.level == 0
    wr(u, LCR, 0x80)
    assert (rd(u, DLL), rd(u, DLM)) == (0x0C, 0x00)


def test_divisor_latch_round_trip():
    # Datasheet 8.10: with LCR.DLAB set, offsets 0/1 are DLL/DLM; clearing
    # DLAB brings RBR/THR and IER back unchanged.
    u, _, chardev, _ = make()
    wr(u, IER, 0x05)
    wr(u, LCR, 0x83)
    wr(u, DLL, 0x01)
    wr(u, DLM, 0x02)
    assert (rd(u, DLL), rd(u, DLM)) == (0x01, 0x02)
    assert u.divider == 0x0201
    wr(u, LCR, 0x03)
    assert rd(u, LCR) == 0x03
    assert rd(u, IER) == 0x05
    assert chardev.data == b""  # the DLL write was not a THR write


def test_scratch_register():
    # Datasheet 8.9: SCR holds any byte.
    u, _, _, _ = make()
    for v in (0x00, 0x55, 0xAA, 0xFF):
        wr(u, SCR, v)
        assert rd(u, SCR) == v


def test_ier_keeps_low_nibble():
    # Datasheet 8.4: IER bits 4-7 are always 0 (QEMU masks with 0x0f).
    u, _, _, _ = make()
    wr(u, IER, 0xF0)
    assert rd(u, IER) == 0x00


def test_fifo_enable_shows_in_iir():
    # Datasheet 8.5: IIR bits 6-7 are set when FCR bit 0 = 1; QEMU reads
    # 0xC1 with FIFOs on and nothing pending, and 0x01 after turning them off.
    u, _, _, _ = make()
    wr(u, FCR, 0x01)
    assert rd(u, IIR) == 0xC1
    wr(u, FCR, 0x00)
    assert rd(u, IIR) == 0x01


def test_transmit_goes_to_chardev():
    # No baud timing: THR writes leave at once, LSR shows THRE|TEMT again.
    u, _, chardev, _ = make()
    for b in b"hello":
        wr(u, THR, b)
    assert bytes(chardev.data) == b"hello"
    assert rd(u, LSR) == 0x60
    wr(u, FCR, 0x07)
    wr(u, THR, ord("!"))
    assert bytes(chardev.data) == b"hello!"
    assert rd(u, LSR) == 0x60


def test_loopback_echo():
    # Datasheet 8.7 (MCR bit 4): transmitted bytes come back to the
    # receiver, nothing goes to the line; modem outputs feed the inputs
    # (RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD), as QEMU's MSR read.
    u, _, chardev, _ = make()
    wr(u, MCR, 0x10)
    assert rd(u, MSR) == 0x00
    wr(u, MCR, 0x1F)
    assert rd(u, MSR) == 0xF0
    wr(u, MCR, 0x10 | 0x02)  # RTS only
    assert rd(u, MSR) == 0x10
    wr(u, MCR, 0x10 | 0x01)  # DTR only
    assert rd(u, MSR) == 0x20
    wr(u, THR, 0x5A)
    assert chardev.data == b""
    assert rd(u, LSR) & 0x01
    assert rd(u, RBR) == 0x5A
    assert rd(u, LSR) == 0x60
    # With FIFOs the loop fills the RX FIFO.
    wr(u, FCR, 0x07)
    for b in b"abc":
        wr(u, THR, b)
    assert bytes(rd(u, RBR) for _ in range(3)) == b"abc"
    assert rd(u, LSR) & 0x01 == 0
    wr(u, MCR, 0x0B)
    assert rd(u, MSR) == 0xB0  # back to the back end's lines


def test_rx_non_fifo_interrupt():
    # Datasheet Table IV: received data available (IIR 0x04) when IER bit 0
    # is set; reading RBR clears it.
    u, irq, _, _ = make()
    wr(u, IER, 0x01)
    assert irq.level == 0
    u.receive(b"x")
    assert rd(u, LSR) & 0x01
    assert rd(u, IIR) == 0x04
    assert irq.level == 1
    assert rd(u, RBR) == ord("x")
    assert rd(u, IIR) == 0x01
    assert irq.level == 0


def test_rx_fifo_trigger_level():
    # Datasheet 8.6 (FCR bits 6-7: trigger 1/4/8/14): the RX interrupt
    # (IIR 0xC4) rises only when the FIFO holds trigger-level bytes, and
    # falls when reading drops it below.
    for fcr, level in ((0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)):
        u, irq, _, _ = make()
        wr(u, FCR, fcr)
        wr(u, IER, 0x01)
        u.receive(bytes(range(level - 1)))
        if level > 1:
            assert irq.level == 0
            assert rd(u, IIR) == 0xC1
            assert rd(u, LSR) & 0x01
        u.receive(b"\xEE")
        assert irq.level == 1
        assert rd(u, IIR) == 0xC4
        rd(u, RBR)
        if level > 1:
            assert irq.level == 0
            assert rd(u, IIR) == 0xC1


def test_rx_character_timeout():
    # Datasheet 8.5 (IIR 0x0C, character timeout): bytes below the trigger
    # level raise the timeout interrupt when the platform's timer fires
    # (QEMU fifo_timeout_int); reading RBR clears it.
    u, irq, _, _ = make()
    wr(u, FCR, 0xC1)
    wr(u, IER, 0x01)
    u.receive(b"ab")
    assert u.rx_timer_armed
    assert irq.level == 0
    u.rx_timeout()
    assert rd(u, IIR) == 0xCC
    assert irq.level == 1
    assert rd(u, RBR) == ord("a")
    assert irq.level == 0
    assert u.rx_timer_armed  # a byte is left: timer re-armed
    u.rx_timeout()
    assert rd(u, IIR) == 0xCC
    assert rd(u, RBR) == ord("b")
    assert rd(u, IIR) == 0xC1
    u.rx_timeout()  # nothing left: no interrupt
    assert irq.level == 0


def test_can_receive_follows_qemu():
    # QEMU serial_can_receive: non-FIFO 1 when RBR is empty; FIFO mode
    # offers up to the trigger level, then one byte, then 0 when full.
    u, _, _, _ = make()
    assert u.can_receive() == 1
    u.receive(b"a")
    assert u.can_receive() == 0
    wr(u, FCR, 0x81)  # FIFO on (flushes), trigger 8
    assert u.can_receive() == 8
    u.receive(b"12345678")
    assert u.can_receive() == 0
    u.receive(b"9")
    assert u.can_receive() == 1
    u.receive(b"ABCDEFG")
    assert u.can_receive() == 0


def test_thre_interrupt_sequence():
    # Datasheet Table IV (THRE: cleared by reading IIR when it is the source,
    # or by writing THR); QEMU: setting IER.THRI while THR is empty raises it
    # at once.
    u, irq, chardev, rec = make()
    wr(u, IER, 0x02)
    assert irq.level == 1
    assert rd(u, IIR) == 0x02
    assert irq.level == 0  # the IIR read cleared it
    assert rd(u, IIR) == 0x01
    wr(u, THR, 0x41)  # transmitted at once: THR empty again -> THRE again
    assert chardev.data == b"A"
    assert irq.level == 1
    assert rd(u, IIR) == 0x02
    assert irq.level == 0
    # Disabling and re-enabling IER.THRI raises it again (Windows relies on it).
    wr(u, IER, 0x00)
    wr(u, IER, 0x02)
    assert irq.level == 1
    wr(u, IER, 0x00)
    assert irq.level == 0
    assert rec.edges == [1, 0, 1, 0, 1, 0]


def test_thre_with_fifo_and_reset_tx():
    # QEMU: FCR TX-FIFO reset makes THRE pending (seen if IER.THRI is set).
    u, irq, _, _ = make()
    wr(u, IER, 0x02)
    rd(u, IIR)
    assert irq.level == 0
    wr(u, FCR, 0x01)  # enabling FIFOs flushes both
    assert irq.level == 1
    assert rd(u, IIR) == 0xC2
    assert rd(u, IIR) == 0xC1


def test_overrun_sets_oe_and_line_status_interrupt():
    # Datasheet 8.3 (LSR bit 1, overrun) and Table IV (line status, IIR
    # 0x06, highest priority); a full RX FIFO keeps its contents; reading
    # LSR clears OE.
    u, irq, _, _ = make()
    wr(u, FCR, 0xC1)
    wr(u, IER, 0x05)
    u.receive(bytes(range(16)))
    assert rd(u, IIR) == 0xC4
    u.receive(b"\xFF")
    assert irq.level == 1
    assert rd(u, IIR) == 0xC6
    lsr = rd(u, LSR)
    assert lsr & 0x02
    assert lsr & 0x01
    assert rd(u, LSR) & 0x02 == 0  # cleared by the read
    assert rd(u, IIR) == 0xC4  # data available is next in priority
    assert bytes(rd(u, RBR) for _ in range(16)) == bytes(range(16))
    assert rd(u, LSR) == 0x60
    assert irq.level == 0


def test_overrun_non_fifo_keeps_newest():
    # Datasheet 8.3: in 16450 mode an overrun replaces the unread byte.
    u, _, _, _ = make()
    u.receive(b"ab")
    assert rd(u, LSR) == 0x63
    assert rd(u, RBR) == ord("b")


def test_modem_status_interrupt():
    # Datasheet 8.8 (MSR delta bits, TERI on RI's trailing edge) and Table
    # IV (modem status, lowest priority, cleared by reading MSR).
    u, irq, _, _ = make()
    wr(u, IER, 0x08)
    u.set_modem_lines(cts=0, dsr=1, ri=1, dcd=1)
    assert irq.level == 1
    assert rd(u, IIR) == 0x00
    assert rd(u, MSR) == 0xE0 | 0x01  # DCD|RI|DSR, delta CTS
    assert irq.level == 0
    u.set_modem_lines(cts=0, dsr=1, ri=0, dcd=1)
    assert rd(u, MSR) == 0xA0 | 0x04  # TERI: RI went 1 -> 0
    assert rd(u, MSR) == 0xA0


def test_priority_line_status_over_data():
    # Datasheet Table IV: line status > RX data > THRE > modem status.
    u, _, _, _ = make()
    wr(u, IER, 0x0F)
    assert rd(u, IIR) == 0x02
    u.receive(b"ab")  # non-FIFO: second byte overruns
    assert rd(u, IIR) == 0x06
    rd(u, LSR)
    assert rd(u, IIR) == 0x04
    rd(u, RBR)
    assert rd(u, IIR) == 0x01  # THRE was cleared by the first IIR read


def test_wide_access_splits_into_bytes():
    # QEMU serial_io_ops impl.max_access_size = 1: a 16-bit read at offset
    # 6 is MSR | SCR << 8; a 16-bit write at 3 writes LCR then MCR.
    u, _, _, _ = make()
    wr(u, SCR, 0x42)
    assert u.read(6, 2) == 0x42B0
    u.write(3, 2, 0x1303)
    assert rd(u, LCR) == 0x03
    assert rd(u, MCR) == 0x13
    assert u.read(7, 2) == 0xFF42  # the byte past the window reads 0xff


def test_state_round_trip():
    u, irq, chardev, _ = make()
    wr(u, FCR, 0x81)
    wr(u, IER, 0x01)
    wr(u, SCR, 0x99)
    u.receive(b"12345678")
    assert irq.level == 1
    d = u.state()
    v, irq2, _, _ = make()
    v.load_state(d)
    assert irq2.level == 1
    assert v.state() == d
    assert rd(v, IIR) == 0xC4
    assert bytes(rd(v, RBR) for _ in range(8)) == b"12345678"


def test_reset_returns_to_power_on():
    u, irq, _, _ = make()
    wr(u, FCR, 0x07)
    wr(u, IER, 0x0F)
    u.receive(b"abc")
    u.reset()
    assert irq.level == 0
    assert (rd(u, LSR), rd(u, IIR), rd(u, IER), rd(u, MCR)) == (0x60, 0x01, 0x00, 0x08)


def test_hostile_sequence_never_raises():
    # A hostile guest: random offsets, sizes and values; the model survives
    # and its registers stay bytes.
    rnd = random.Random(16550)
    u, irq, _, _ = make()
    sizes = (1, 1, 1, 1, 2, 4, 8, 3, 0)
    for _ in range(10000):
        op = rnd.random()
        off = rnd.choice((0, 1, 2, 3, 4, 5, 6, 7, 7, 8, -1, 1000))
        size = rnd.choice(sizes)
        if op < 0.45:
            v = u.read(off, size)
            assert 0 <= v < (1 << (8 * max(size, 1))) or size not in (1, 2, 4, 8)
        elif op < 0.9:
            u.write(off, size, rnd.choice((rnd.randrange(256), rnd.randrange(1 << 64), -1)))
        elif op < 0.95:
            u.receive(bytes(rnd.randrange(256) for _ in range(rnd.randrange(20))))
        elif op < 0.97:
            u.rx_timeout()
        elif op < 0.98:
            u.receive_break()
        else:
            u.set_modem_lines(*(rnd.randrange(2) for _ in range(4)))
        assert 0 <= u.rx.num <= 16
        for k in ("ier", "iir", "lcr", "mcr", "lsr", "msr", "scr", "fcr"):
            assert 0 <= getattr(u, k) <= 0xFF
        assert irq.level == (0 if u.iir & 1 else 1)
    d = u.state()
    v, _, _, _ = make()
    v.load_state(d)
    assert v.state() == d
