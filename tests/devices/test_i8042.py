# Tests of the i8042 controller with its PS/2 keyboard and mouse, driven the
# way a BIOS or an OS driver drives them. Each test names the 8042 / PS/2
# documentation or the QEMU hw/input/pckbd.c / ps2.c behaviour it pins.
import random

from stubdm.devices.i8042 import I8042
from stubdm.irq import IrqLine

DATA, CMD = 0, 4


class Rig:
    def __init__(self):
        self.resets = 0
        self.a20 = []
        self.kbd_edges = []
        self.aux_edges = []
        self.kbd_irq = IrqLine(self.kbd_edges.append)
        self.aux_irq = IrqLine(self.aux_edges.append)
        self.dev = I8042(self.kbd_irq, self.aux_irq, self.on_reset, self.a20.append)

    def on_reset(self):
        self.resets += 1

    def cmd(self, v):
        self.dev.write(CMD, 1, v)

    def data(self, v):
        self.dev.write(DATA, 1, v)

    def status(self):
        return self.dev.read(CMD, 1)

    def read(self):
        return self.dev.read(DATA, 1)

    def drain(self):
        out = []
        while self.status() & 0x01:
            out.append(self.read())
        return out


def test_reset_status():
    # QEMU kbd_reset: status = CMD|UNLOCKED (0x18), command byte 0x03.
    r = Rig()
    assert r.status() == 0x18
    r.cmd(0x20)
    assert r.drain() == [0x03]


def test_self_test_returns_55_and_sets_sys():
    # 8042 command 0xAA: controller self test -> 0x55, sets the system
    # flag (status bit 2); QEMU: status 0x1C once read.
    r = Rig()
    r.cmd(0xAA)
    assert r.status() == 0x1D
    assert r.read() == 0x55
    assert r.status() == 0x1C


def test_interface_tests():
    # 8042 commands 0xAB (keyboard interface test) and 0xA9 (aux interface
    # test): 0x00 = no error. 0xC0 reads the input port (QEMU: 0x80).
    r = Rig()
    r.cmd(0xAB)
    assert r.drain() == [0x00]
    r.cmd(0xA9)
    assert r.drain() == [0x00]
    r.cmd(0xC0)
    assert r.drain() == [0x80]


def test_command_byte_round_trip():
    # 8042 commands 0x60 (write command byte) / 0x20 (read it back).
    r = Rig()
    for v in (0x00, 0x47, 0x65, 0x74, 0xFF):
        r.cmd(0x60)
        r.data(v)
        r.cmd(0x20)
        assert r.drain() == [v]


def test_disable_enable_bits_in_command_byte():
    # 8042 commands 0xAD/0xAE and 0xA7/0xA8 set and clear command byte bits
    # 4 and 5.
    r = Rig()
    r.cmd(0xAD)
    r.cmd(0xA7)
    r.cmd(0x20)
    assert r.drain() == [0x03 | 0x10 | 0x20]
    r.cmd(0xAE)
    r.cmd(0xA8)
    r.cmd(0x20)
    assert r.drain() == [0x03]


def test_keyboard_reset_sequence_and_irq1():
    # PS/2 keyboard command 0xFF: ACK 0xFA then BAT 0xAA. QEMU: each byte is
    # latched in turn, IRQ1 high while one waits (command byte bit 0), low
    # once the last is read.
    r = Rig()
    r.data(0xFF)
    assert r.status() & 0x21 == 0x01  # OBF, not from the aux port
    assert r.kbd_irq.level == 1
    assert r.aux_irq.level == 0
    assert r.read() == 0xFA
    assert r.kbd_irq.level == 1  # the next byte was latched at once
    assert r.read() == 0xAA
    assert r.kbd_irq.level == 0
    assert r.status() & 0x01 == 0
    assert r.read() == 0xAA  # empty: the last byte again (QEMU, for EMM386)
    assert r.kbd_edges == [1, 0, 1, 0]


def test_irq1_masked_by_command_byte():
    # Command byte bit 0 = 0: data still sets OBF, but IRQ1 stays low
    # (polling drivers); setting it again raises IRQ1 at once.
    r = Rig()
    r.cmd(0x60)
    r.data(0x00)
    r.data(0xF4)
    assert r.status() & 0x01
    assert r.kbd_irq.level == 0
    r.cmd(0x60)
    r.data(0x01)
    assert r.kbd_irq.level == 1
    assert r.read() == 0xFA
    assert r.kbd_irq.level == 0


def test_keyboard_commands():
    # PS/2 keyboard commands as QEMU ps2_write_keyboard answers them.
    r = Rig()
    r.data(0xF2)
    assert r.drain() == [0xFA, 0xAB, 0x83]  # MF2 keyboard, untranslated
    r.data(0xED)
    assert r.drain() == [0xFA]
    r.data(0x07)
    assert r.drain() == [0xFA]
    assert r.dev.kbd.ledstate == 0x07
    r.data(0xF3)
    assert r.drain() == [0xFA]
    r.data(0x20)
    assert r.drain() == [0xFA]
    r.data(0xEE)
    assert r.drain() == [0xEE]
    r.data(0xF0)
    assert r.drain() == [0xFA]
    r.data(0x00)
    assert r.drain() == [0xFA, 0x02]  # current set: 2
    r.data(0xF0)
    r.data(0x01)
    assert r.drain() == [0xFA]
    r.data(0xF0)
    r.data(0x00)
    assert r.drain() == [0xFA, 0x01]
    r.data(0xF5)
    assert r.drain() == [0xFA]
    assert r.dev.kbd.scan_enabled == 0
    r.data(0xF4)
    assert r.drain() == [0xFA]
    assert r.dev.kbd.scan_enabled == 1
    r.data(0x12)  # unknown
    assert r.drain() == [0xFE]


def test_keyboard_id_translated():
    # QEMU: with translation (command byte bit 6) the ID reads FA AB 41.
    r = Rig()
    r.cmd(0x60)
    r.data(0x61)
    r.data(0xF2)
    assert r.drain() == [0xFA, 0xAB, 0x41]


def test_key_events_and_translation():
    # Scancodes go out in the keyboard's set; with command byte bit 6 the
    # 8042 translates set 2 to set 1 (0x1C 'A' make -> 0x1E, F0 1C -> 0x9E).
    r = Rig()
    r.dev.key_event(b"\x1c\xf0\x1c")
    assert r.drain() == [0x1C, 0xF0, 0x1C]
    r.cmd(0x60)
    r.data(0x41)
    r.dev.key_event(b"\x1c\xf0\x1c")
    assert r.drain() == [0x1E, 0x9E]
    # A disabled keyboard (0xF5) drops keys.
    r.data(0xF5)
    r.drain()
    r.dev.key_event(b"\x1c")
    assert r.drain() == []


def test_disabled_interface_holds_data():
    # 8042 command 0xAD: keyboard data is held back until 0xAE (QEMU
    # kbd_pending masks it); controller replies still get through.
    r = Rig()
    r.cmd(0xAD)
    r.dev.key_event(b"\x1c")
    assert r.status() & 0x01 == 0
    r.cmd(0xAA)
    assert r.drain() == [0x55]
    r.cmd(0xAE)
    assert r.kbd_irq.level == 1
    assert r.drain() == [0x1C]


def test_write_output_buffers():
    # 8042 commands 0xD2 / 0xD3: the next data byte appears as if from the
    # keyboard (IRQ1) / the aux device (status bit 5, IRQ12).
    r = Rig()
    r.cmd(0xD2)
    r.data(0x42)
    assert r.status() & 0x21 == 0x01
    assert r.kbd_irq.level == 1
    assert r.read() == 0x42
    r.cmd(0xD3)
    r.data(0x43)
    assert r.status() & 0x21 == 0x21
    assert r.aux_irq.level == 1
    assert r.kbd_irq.level == 0
    assert r.read() == 0x43
    assert r.aux_irq.level == 0


def test_mouse_via_d4():
    # 8042 command 0xD4 sends a byte to the aux device; PS/2 mouse: reset
    # FF -> FA AA 00, F2 -> FA 00, F4 -> FA, E9 -> FA status res rate.
    r = Rig()
    r.cmd(0xD4)
    r.data(0xFF)
    assert r.status() & 0x21 == 0x21
    assert r.aux_irq.level == 1
    assert r.drain() == [0xFA, 0xAA, 0x00]
    assert r.aux_irq.level == 0
    r.cmd(0xD4)
    r.data(0xF2)
    assert r.drain() == [0xFA, 0x00]
    r.cmd(0xD4)
    r.data(0xE8)
    assert r.drain() == [0xFA]
    r.cmd(0xD4)
    r.data(0x03)
    assert r.drain() == [0xFA]
    r.cmd(0xD4)
    r.data(0xF3)
    r.cmd(0xD4)
    r.data(40)
    assert r.drain() == [0xFA, 0xFA]
    r.cmd(0xD4)
    r.data(0xE7)
    assert r.drain() == [0xFA]
    r.cmd(0xD4)
    r.data(0xF4)
    assert r.drain() == [0xFA]
    r.cmd(0xD4)
    r.data(0xE9)
    assert r.drain() == [0xFA, 0x20 | 0x10, 0x03, 40]
    r.cmd(0xD4)
    r.data(0xE6)
    assert r.drain() == [0xFA]
    # Unknown mouse command: 0xFE (resend), as QEMU 11.1 answers.
    r.cmd(0xD4)
    r.data(0x61)
    assert r.drain() == [0xFE]


def test_mouse_intellimouse_detection_and_packets():
    # QEMU ps2_write_mouse: sample rates 200, 100, 80 make an IntelliMouse
    # (ID 3, 4-byte packets); movement sends packets in stream mode.
    r = Rig()

    def aux(v):
        r.cmd(0xD4)
        r.data(v)

    for rate in (200, 100, 80):
        aux(0xF3)
        aux(rate)
    r.drain()
    aux(0xF2)
    assert r.drain() == [0xFA, 0x03]
    r.dev.mouse_event(5, 3)  # not enabled yet: dropped
    assert r.drain() == []
    aux(0xF4)
    r.drain()
    r.dev.mouse_event(5, -3, 1, buttons=1)
    assert r.drain() == [0x08 | 0x20 | 0x01, 5, 0xFD, 0x01]


def test_output_port_write_bit0_resets():
    # 8042 command 0xD1: output port bit 0 is the CPU reset line, active
    # low; bit 1 is the A20 gate. QEMU outport_write.
    r = Rig()
    r.cmd(0xD0)
    assert r.drain() == [0xCF]
    r.cmd(0xD1)
    r.data(0xDF)  # reset high, A20 on
    assert r.resets == 0
    assert r.a20 == [1]
    r.cmd(0xD1)
    r.data(0xDD)  # A20 off
    assert r.a20 == [1, 0]
    assert r.resets == 0
    r.cmd(0xD1)
    r.data(0xDE)  # bit 0 low: reset
    assert r.resets == 1
    r.cmd(0xD0)
    assert r.drain() == [0xDE]


def test_pulse_reset():
    # 8042 commands 0xF0-0xFF pulse the output port bits whose command bit
    # is 0: 0xFE pulses bit 0 (CPU reset); odd values pulse no reset.
    r = Rig()
    r.cmd(0xFE)
    assert r.resets == 1
    r.cmd(0xF0)
    assert r.resets == 2
    r.cmd(0xFF)
    r.cmd(0xF1)
    r.cmd(0xFD)
    assert r.resets == 2
    assert r.status() & 0x01 == 0


def test_a20_commands():
    # 0xDD / 0xDF (A20 off / on, QEMU accepts them) drive the A20 callback
    # and output port bit 1.
    r = Rig()
    r.cmd(0xDD)
    assert r.a20 == [0]
    r.cmd(0xD0)
    assert r.drain() == [0xCD]
    r.cmd(0xDF)
    assert r.a20 == [0, 1]
    r.cmd(0xD0)
    assert r.drain() == [0xCF]


def test_unread_keyboard_reply_discarded():
    # QEMU ps2_write_keyboard: replies the guest has not read are dropped
    # when it sends the keyboard another byte; the output buffer only names
    # the source, so the next read gives the new reply (checked on QEMU 11.1).
    r = Rig()
    r.data(0xF2)  # FA AB 83 queued, OBF set
    r.data(0xEE)
    assert r.drain() == [0xEE]


def test_controller_reply_first():
    # QEMU: a controller reply waits in its own buffer and is latched ahead
    # of keyboard data once the current byte is read.
    r = Rig()
    r.dev.key_event(b"\x1c\x32")
    r.cmd(0x20)
    assert r.drain() == [0x1C, 0x03, 0x32]


def test_undecoded_offsets_read_all_ones():
    r = Rig()
    for off in (1, 2, 3, 5, 6, 7, 8, -1):
        assert r.dev.read(off, 1) == 0xFF
    assert r.dev.read(4, 2) == 0xFF18
    r.dev.write(2, 1, 0xAA)
    assert r.status() == 0x18


def test_state_round_trip():
    r = Rig()
    r.cmd(0x60)
    r.data(0x47)
    r.dev.key_event(b"\x1c\x32\x21")
    r.read()
    d = r.dev.state()
    r2 = Rig()
    r2.dev.load_state(d)
    assert r2.dev.state() == d
    assert r2.kbd_irq.level == 1
    assert r2.drain() == r.drain()


def test_reset_method():
    r = Rig()
    r.data(0xFF)
    r.cmd(0xA7)
    r.dev.reset()
    assert r.status() == 0x18
    assert r.kbd_irq.level == 0
    r.cmd(0x20)
    assert r.drain() == [0x03]


def test_hostile_sequence_never_raises():
    # A hostile guest and back end: random ports, sizes, values and input
    # events for 10000 steps. Reset requests are counted, never fatal.
    rnd = random.Random(8042)
    r = Rig()
    for _ in range(10000):
        op = rnd.random()
        off = rnd.choice((0, 0, 4, 4, 1, 3, 5, 7, 8, -4))
        size = rnd.choice((1, 1, 1, 2, 4, 8, 3))
        if op < 0.4:
            v = r.dev.read(off, size)
            assert v >= 0
        elif op < 0.85:
            r.dev.write(off, size, rnd.choice((rnd.randrange(256), rnd.randrange(1 << 40), -7)))
        elif op < 0.95:
            r.dev.key_event(bytes(rnd.randrange(256) for _ in range(rnd.randrange(6))))
        else:
            r.dev.mouse_event(
                rnd.randrange(-1000, 1000), rnd.randrange(-1000, 1000),
                rnd.randrange(-20, 20), rnd.randrange(256),
            )
        assert len(r.dev.kbd.q) <= 16 + 3
        assert len(r.dev.mouse.q) <= 16
        for k in ("status", "mode", "outport", "pending", "obdata", "cbdata"):
            assert 0 <= getattr(r.dev, k) <= 0xFF
        # IRQ1 and IRQ12 are never both high: one output buffer.
        assert not (r.kbd_irq.level and r.aux_irq.level)
    d = r.dev.state()
    r2 = Rig()
    r2.dev.load_state(d)
    assert r2.dev.state() == d
