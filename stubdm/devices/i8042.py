"""i8042 PS/2 controller with its keyboard and mouse: ports 0x60 and 0x64.

Sources: the IBM PC/AT technical reference and the Intel 8042 / Phoenix
keyboard controller BIOS notes (status register, command byte, controller
commands), the IBM PS/2 keyboard and mouse technical references (device
commands), and QEMU hw/input/pckbd.c and ps2.c (extended state on,
throttling off), whose guest-visible behaviour this model follows byte for
byte (checked against QEMU 11.1.3 through qtest: random port sequences give
the same bytes, status and IRQ1/IRQ12 levels).

Window: offset 0 = data port 0x60, offset 4 = status (read) / command
(write) port 0x64. Other offsets are not decoded: reads give 0xff, writes are
dropped, both reported as guest errors. Wider accesses are split into byte
accesses at consecutive offsets, as QEMU's memory core does for these 1-byte
ports.

Side effects go through what is handed in: kbd_irq (IRQ1) and aux_irq
(IRQ12) with set_level(0|1); reset_cb() when the guest pulls the CPU reset
line (output port bit 0 low, or a pulse command 0xF0-0xFE with bit 0 clear);
a20_cb(level) when the guest drives the A20 gate (output port bit 1).
Input: key_event(bytes) takes scancodes in the keyboard's current set
(normally set 2, as a keyboard sends them); the controller translates them to
set 1 when command byte bit 6 is set. mouse_event(dx, dy, dz, buttons) takes
PS/2 deltas (dy positive = up) and buttons (bit 0 left, 1 right, 2 middle).

Output buffer: each device (keyboard, mouse) keeps its own queue; the
controller's own replies (0x20, 0xAA, 0xD2, ...) sit in a one-byte buffer
that comes first. One source at a time is latched into the output buffer
(status OBF, plus AUX_OBF for mouse bytes) and stays latched until the guest
reads port 0x60, which takes that source's next byte and latches the next
source. IRQ1/IRQ12 follow OBF,
gated by command byte bits 0/1 (and, for IRQ1, bit 4 = keyboard disabled).

Deliberate differences from a real 8042, all following QEMU:
- Status bit 3 (CMD/DATA, "last write was to 0x64") always reads 1, and
  IBF (bit 1) is always 0: commands complete instantly.
- Status bit 2 (SYS) is set only by the self test (0xAA), not by command
  byte bit 2; status after reset is 0x18, after self test 0x1C.
- Command byte after reset is 0x03 (interrupts on, translation off), output
  port 0xCF; the BIOS sets the rest.
- Reading 0x60 with nothing latched returns the last byte again (EMM386).
- Keyboard ID (0xF2) is FA AB 83, or FA AB 41 with translation on;
  "get scancode set" (0xF0 0x00) answers the translated value too.
- Unknown keyboard and mouse commands answer 0xFE (resend); unknown
  controller commands (0xA1 "get version" among them) are dropped, logged.
- Unread keyboard command replies are discarded when the guest sends the
  keyboard another byte.
Deliberate difference from QEMU: none known in the register interface; the
reset/A20 effects are the platform's (reset_cb is called where QEMU requests
a system reset; the device does not reset itself).
"""
from stubdm import log
from stubdm.compat import const

# Window offsets.
OFF_DATA = const(0)  # port 0x60
OFF_CMD = const(4)  # port 0x64
WINDOW = const(8)

# Status register (port 0x64 read).
STAT_OBF = const(0x01)  # output buffer full
STAT_IBF = const(0x02)  # input buffer full (never: commands run at once)
STAT_SELFTEST = const(0x04)  # system flag, set by a passed self test
STAT_CMD = const(0x08)  # last write was a command
STAT_UNLOCKED = const(0x10)  # keylock off
STAT_MOUSE_OBF = const(0x20)  # the byte in the output buffer is from the aux port

# Command byte ("mode"; controller commands 0x20 / 0x60).
MODE_KBD_INT = const(0x01)
MODE_MOUSE_INT = const(0x02)
MODE_SYS = const(0x04)
MODE_NO_KEYLOCK = const(0x08)
MODE_DISABLE_KBD = const(0x10)
MODE_DISABLE_MOUSE = const(0x20)
MODE_KCC = const(0x40)  # translate set 2 to set 1

# Output port (0xD0 / 0xD1).
OUT_RESET = const(0x01)  # active low: 0 resets the CPU
OUT_A20 = const(0x02)
OUT_OBF = const(0x10)
OUT_MOUSE_OBF = const(0x20)
OUT_ONES = const(0xCC)

# Controller commands (port 0x64 write).
CCMD_READ_MODE = const(0x20)
CCMD_WRITE_MODE = const(0x60)
CCMD_MOUSE_DISABLE = const(0xA7)
CCMD_MOUSE_ENABLE = const(0xA8)
CCMD_TEST_MOUSE = const(0xA9)
CCMD_SELF_TEST = const(0xAA)
CCMD_KBD_TEST = const(0xAB)
CCMD_KBD_DISABLE = const(0xAD)
CCMD_KBD_ENABLE = const(0xAE)
CCMD_READ_INPORT = const(0xC0)
CCMD_READ_OUTPORT = const(0xD0)
CCMD_WRITE_OUTPORT = const(0xD1)
CCMD_WRITE_OBUF = const(0xD2)
CCMD_WRITE_AUX_OBUF = const(0xD3)
CCMD_WRITE_MOUSE = const(0xD4)
CCMD_DISABLE_A20 = const(0xDD)
CCMD_ENABLE_A20 = const(0xDF)
CCMD_PULSE_BITS_3_0 = const(0xF0)  # 0xF0-0xFF: pulse low the output bits whose bit is 0
CCMD_RESET = const(0xFE)
CCMD_NO_OP = const(0xFF)

# What is waiting to be latched into the output buffer.
PENDING_CTRL_KBD = const(0x04)
PENDING_CTRL_AUX = const(0x08)
PENDING_KBD = const(0x10)  # same bit as MODE_DISABLE_KBD, which masks it
PENDING_AUX = const(0x20)  # same bit as MODE_DISABLE_MOUSE

# Where the latched byte came from.
OBSRC_KBD = const(0x01)
OBSRC_MOUSE = const(0x02)
OBSRC_CTRL = const(0x04)

# Keyboard commands and replies (IBM PS/2 keyboard reference).
KBD_CMD_SET_LEDS = const(0xED)
KBD_CMD_ECHO = const(0xEE)
KBD_CMD_SCANCODE = const(0xF0)
KBD_CMD_GET_ID = const(0xF2)
KBD_CMD_SET_RATE = const(0xF3)
KBD_CMD_ENABLE = const(0xF4)
KBD_CMD_RESET_DISABLE = const(0xF5)
KBD_CMD_RESET_ENABLE = const(0xF6)
KBD_CMD_SET_TYPEMATIC = const(0xFA)
KBD_CMD_SET_MAKE_BREAK = const(0xFC)
KBD_CMD_RESET = const(0xFF)
KBD_REPLY_POR = const(0xAA)
KBD_REPLY_ID = const(0xAB)
KBD_REPLY_ACK = const(0xFA)
KBD_REPLY_RESEND = const(0xFE)

# Mouse commands (IBM PS/2 mouse reference).
AUX_SET_SCALE11 = const(0xE6)
AUX_SET_SCALE21 = const(0xE7)
AUX_SET_RES = const(0xE8)
AUX_GET_SCALE = const(0xE9)  # status request
AUX_SET_STREAM = const(0xEA)
AUX_POLL = const(0xEB)
AUX_RESET_WRAP = const(0xEC)
AUX_SET_WRAP = const(0xEE)
AUX_SET_REMOTE = const(0xF0)
AUX_GET_TYPE = const(0xF2)
AUX_SET_SAMPLE = const(0xF3)
AUX_ENABLE_DEV = const(0xF4)
AUX_DISABLE_DEV = const(0xF5)
AUX_SET_DEFAULT = const(0xF6)
AUX_RESET = const(0xFF)
AUX_ACK = const(0xFA)

MOUSE_STATUS_REMOTE = const(0x40)
MOUSE_STATUS_ENABLED = const(0x20)
MOUSE_STATUS_SCALE21 = const(0x10)

PS2_QUEUE_SIZE = const(16)  # bytes a PS/2 device buffers

# The 8042's set 2 -> set 1 translation, codes 0x00-0x87; higher codes pass
# through unchanged.
_XLATE_LOW = (
    0xFF, 0x43, 0x41, 0x3F, 0x3D, 0x3B, 0x3C, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3E, 0x0F, 0x29, 0x59,
    0x65, 0x38, 0x2A, 0x70, 0x1D, 0x10, 0x02, 0x5A, 0x66, 0x71, 0x2C, 0x1F, 0x1E, 0x11, 0x03, 0x5B,
    0x67, 0x2E, 0x2D, 0x20, 0x12, 0x05, 0x04, 0x5C, 0x68, 0x39, 0x2F, 0x21, 0x14, 0x13, 0x06, 0x5D,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5E, 0x6A, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5F,
    0x6B, 0x33, 0x25, 0x17, 0x18, 0x0B, 0x0A, 0x60, 0x6C, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0C, 0x61,
    0x6D, 0x73, 0x28, 0x74, 0x1A, 0x0D, 0x62, 0x6E, 0x3A, 0x36, 0x1C, 0x1B, 0x75, 0x2B, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7A, 0x0E, 0x7B, 0x7C, 0x4F, 0x7D, 0x4B, 0x47, 0x7E, 0x7F, 0x6F,
    0x52, 0x53, 0x50, 0x4C, 0x4D, 0x48, 0x01, 0x45, 0x57, 0x4E, 0x51, 0x4A, 0x37, 0x49, 0x46, 0x54,
    0x80, 0x81, 0x82, 0x41, 0x54, 0x85, 0x86, 0x87,
)


def translate(code):
    """Set 2 scancode -> set 1 (8042 translation)."""
    code &= 0xFF
    if code < len(_XLATE_LOW):
        return _XLATE_LOW[code]
    return code


def _b(data):
    out = bytearray(len(data))
    for i in range(len(data)):
        out[i] = data[i] & 0xFF
    return bytes(out)


class _Ps2Device:
    """A PS/2 device's output queue; `irq_cb(level)` tells the controller."""

    def __init__(self, irq_cb):
        self.irq_cb = irq_cb
        self.reset_common()

    def reset_common(self):
        self.write_cmd = -1
        self.q = []
        self.ccount = 0  # command replies at the head of q
        self.last = 0

    def reset_queue(self):
        self.q = []
        self.ccount = 0

    def queue(self, *bs):
        # All or nothing, as QEMU's ps2_queue_N.
        if PS2_QUEUE_SIZE - len(self.q) < len(bs):
            return
        for b in bs:
            self.q.append(b & 0xFF)
        self.irq_cb(1)

    def cqueue(self, *bs):
        # Command replies jump ahead of queued scancodes.
        self.q = [b & 0xFF for b in bs] + self.q
        self.ccount = len(bs)
        self.irq_cb(1)

    def cqueue_reset(self):
        if self.ccount:
            self.q = self.q[self.ccount :]
            self.ccount = 0

    def read_data(self):
        if not self.q:
            return self.last
        val = self.q.pop(0)
        if self.ccount:
            self.ccount -= 1
        self.last = val
        self.irq_cb(0)
        if self.q:
            self.irq_cb(1)
        return val

    def common_state(self):
        return {
            "write_cmd": self.write_cmd,
            "queue": _b(self.q),
            "ccount": self.ccount,
            "last": self.last,
        }

    def load_common(self, d):
        wc = int(d.get("write_cmd", -1))
        self.write_cmd = wc if 0 <= wc <= 0xFF else -1
        q = [b & 0xFF for b in bytes(d.get("queue", b""))]
        ccount = int(d.get("ccount", 0))
        ccount = max(0, min(ccount, len(q), 8))
        self.q = q[: ccount + PS2_QUEUE_SIZE]
        self.ccount = ccount
        self.last = int(d.get("last", 0)) & 0xFF


class _Ps2Keyboard(_Ps2Device):
    def __init__(self, irq_cb):
        super().__init__(irq_cb)
        self.reset()

    def reset(self):
        self.reset_common()
        self.scan_enabled = 1
        self.translate = 0
        self.scancode_set = 2
        self.ledstate = 0
        self.need_high_bit = 0

    def _reset_keyboard(self):
        self.scan_enabled = 1
        self.scancode_set = 2
        self.reset_queue()
        self.ledstate = 0

    def put_keycode(self, code):
        code &= 0xFF
        if self.translate:
            if code == 0xF0:
                self.need_high_bit = 1  # set 2 break prefix -> set 1 high bit
            elif self.need_high_bit:
                self.queue(translate(code) | 0x80)
                self.need_high_bit = 0
            else:
                self.queue(translate(code))
        else:
            self.queue(code)

    def key_event(self, data):
        # A disabled keyboard drops keys rather than corrupt the stream.
        if not self.scan_enabled:
            return
        for b in data:
            self.put_keycode(b)

    def write(self, val):
        self.cqueue_reset()
        self.cqueue(*self._command(val))

    def write_many(self, buf, start, end):
        """write() of buf[start:end]: each one's replies replace the last's,
        so only the last byte's are queued (and the controller told once)."""
        self.cqueue_reset()
        reply = ()
        cmd = self._command
        for j in range(start, end):
            reply = cmd(buf[j])
        self.cqueue(*reply)

    def _command(self, val):
        """A byte from the host: the keyboard's state changes; its replies."""
        wc = self.write_cmd
        if wc == KBD_CMD_SET_MAKE_BREAK:
            reply = (KBD_REPLY_ACK,)
            self.write_cmd = -1
        elif wc == KBD_CMD_SCANCODE:
            if val == 0:
                cur = self.scancode_set
                reply = (KBD_REPLY_ACK, translate(cur) if self.translate else cur)
            elif 1 <= val <= 3:
                self.scancode_set = val
                reply = (KBD_REPLY_ACK,)
            else:
                reply = (KBD_REPLY_RESEND,)
            self.write_cmd = -1
        elif wc == KBD_CMD_SET_LEDS:
            self.ledstate = val
            reply = (KBD_REPLY_ACK,)
            self.write_cmd = -1
        elif wc == KBD_CMD_SET_RATE:
            reply = (KBD_REPLY_ACK,)
            self.write_cmd = -1
        elif val == 0x00:
            reply = (KBD_REPLY_ACK,)
        elif val == 0x05:
            reply = (KBD_REPLY_RESEND,)
        elif val == KBD_CMD_GET_ID:
            # An MF2 keyboard; the ID's second byte is translated too.
            reply = (KBD_REPLY_ACK, KBD_REPLY_ID, 0x41 if self.translate else 0x83)
        elif val == KBD_CMD_ECHO:
            reply = (KBD_CMD_ECHO,)
        elif val == KBD_CMD_ENABLE:
            self.scan_enabled = 1
            reply = (KBD_REPLY_ACK,)
        elif val in (KBD_CMD_SCANCODE, KBD_CMD_SET_LEDS, KBD_CMD_SET_RATE, KBD_CMD_SET_MAKE_BREAK):
            self.write_cmd = val
            reply = (KBD_REPLY_ACK,)
        elif val == KBD_CMD_RESET_DISABLE:
            self._reset_keyboard()
            self.scan_enabled = 0
            reply = (KBD_REPLY_ACK,)
        elif val == KBD_CMD_RESET_ENABLE:
            self._reset_keyboard()
            self.scan_enabled = 1
            reply = (KBD_REPLY_ACK,)
        elif val == KBD_CMD_RESET:
            self._reset_keyboard()
            reply = (KBD_REPLY_ACK, KBD_REPLY_POR)
        elif val == KBD_CMD_SET_TYPEMATIC:
            reply = (KBD_REPLY_ACK,)
        else:
            reply = (KBD_REPLY_RESEND,)
        return reply

    _FIELDS = ("scan_enabled", "translate", "scancode_set", "ledstate", "need_high_bit")

    def state(self):
        d = self.common_state()
        for k in self._FIELDS:
            d[k] = getattr(self, k)
        return d

    def load_state(self, d):
        self.load_common(d)
        self.scan_enabled = 1 if d.get("scan_enabled", 1) else 0
        self.translate = 1 if d.get("translate", 0) else 0
        s = int(d.get("scancode_set", 2))
        self.scancode_set = s if 1 <= s <= 3 else 2
        self.ledstate = int(d.get("ledstate", 0)) & 0xFF
        self.need_high_bit = 1 if d.get("need_high_bit", 0) else 0


class _Ps2Mouse(_Ps2Device):
    def __init__(self, irq_cb):
        super().__init__(irq_cb)
        self.reset()

    def reset(self):
        self.reset_common()
        self.status = 0
        self.resolution = 0
        self.sample_rate = 0
        self.wrap = 0
        self.type = 0  # 0 PS/2, 3 IntelliMouse, 4 IntelliMouse Explorer
        self.detect_state = 0
        self.dx = 0
        self.dy = 0
        self.dz = 0
        self.buttons = 0

    def send_packet(self):
        needed = 4 if self.type else 3
        if PS2_QUEUE_SIZE - len(self.q) < needed:
            return False
        dx = max(-127, min(127, self.dx))
        dy = max(-127, min(127, self.dy))
        dz = self.dz
        b0 = 0x08 | (0x10 if dx < 0 else 0) | (0x20 if dy < 0 else 0) | (self.buttons & 0x07)
        bs = [b0, dx & 0xFF, dy & 0xFF]
        if self.type == 3:
            dz = max(-127, min(127, dz))
            bs.append(dz & 0xFF)
            self.dz -= dz
        elif self.type == 4:
            dz = max(-7, min(7, dz))
            bs.append((dz & 0x0F) | ((self.buttons & 0x18) << 1))
            self.dz -= dz
        else:
            self.dz = 0  # no wheel on a plain PS/2 mouse
        self.queue(*bs)
        self.dx -= dx
        self.dy -= dy
        return True

    def event(self, dx, dy, dz, buttons):
        if not (self.status & MOUSE_STATUS_ENABLED):
            return
        # Keep the accumulators bounded whatever the back end sends.
        self.dx = max(-4096, min(4096, self.dx + dx))
        self.dy = max(-4096, min(4096, self.dy + dy))
        self.dz = max(-4096, min(4096, self.dz + dz))
        self.buttons = buttons & 0x1F
        if not (self.status & MOUSE_STATUS_REMOTE):
            while self.send_packet():
                if self.dx == 0 and self.dy == 0 and self.dz == 0:
                    break

    def write(self, val):
        wc = self.write_cmd
        if wc == AUX_SET_SAMPLE:
            self.sample_rate = val
            # IntelliMouse detection: sample rates 200,100,80 -> type 3;
            # 200,200,80 -> type 4.
            ds = self.detect_state
            if ds == 1:
                self.detect_state = 2 if val == 100 else (3 if val == 200 else 0)
            elif ds == 2:
                if val == 80:
                    self.type = 3
                self.detect_state = 0
            elif ds == 3:
                if val == 80:
                    self.type = 4
                self.detect_state = 0
            elif val == 200:
                self.detect_state = 1
            self.queue(AUX_ACK)
            self.write_cmd = -1
            return
        if wc == AUX_SET_RES:
            self.resolution = val
            self.queue(AUX_ACK)
            self.write_cmd = -1
            return
        if self.wrap:
            if val == AUX_RESET_WRAP:
                self.wrap = 0
                self.queue(AUX_ACK)
                return
            if val != AUX_RESET:
                self.queue(val)  # wrap mode echoes
                return
        if val == AUX_SET_SCALE11:
            self.status &= ~MOUSE_STATUS_SCALE21
            self.queue(AUX_ACK)
        elif val == AUX_SET_SCALE21:
            self.status |= MOUSE_STATUS_SCALE21
            self.queue(AUX_ACK)
        elif val == AUX_SET_STREAM:
            self.status &= ~MOUSE_STATUS_REMOTE
            self.queue(AUX_ACK)
        elif val == AUX_SET_WRAP:
            self.wrap = 1
            self.queue(AUX_ACK)
        elif val == AUX_SET_REMOTE:
            self.status |= MOUSE_STATUS_REMOTE
            self.queue(AUX_ACK)
        elif val == AUX_GET_TYPE:
            self.queue(AUX_ACK, self.type)
        elif val in (AUX_SET_RES, AUX_SET_SAMPLE):
            self.write_cmd = val
            self.queue(AUX_ACK)
        elif val == AUX_GET_SCALE:
            self.queue(AUX_ACK, self.status, self.resolution, self.sample_rate)
        elif val == AUX_POLL:
            self.queue(AUX_ACK)
            self.send_packet()
        elif val == AUX_ENABLE_DEV:
            self.status |= MOUSE_STATUS_ENABLED
            self.queue(AUX_ACK)
        elif val == AUX_DISABLE_DEV:
            self.status &= ~MOUSE_STATUS_ENABLED
            self.queue(AUX_ACK)
        elif val == AUX_SET_DEFAULT:
            self.sample_rate = 100
            self.resolution = 2
            self.status = 0
            self.queue(AUX_ACK)
        elif val == AUX_RESET:
            self.sample_rate = 100
            self.resolution = 2
            self.status = 0
            self.type = 0
            self.reset_queue()
            self.queue(AUX_ACK, 0xAA, self.type)
        else:
            self.queue(KBD_REPLY_RESEND)  # unknown command: 0xFE (QEMU 11)

    _FIELDS = (
        "status", "resolution", "sample_rate", "wrap", "type", "detect_state",
        "dx", "dy", "dz", "buttons",
    )

    def state(self):
        d = self.common_state()
        for k in self._FIELDS:
            d[k] = getattr(self, k)
        return d

    def load_state(self, d):
        self.load_common(d)
        for k in self._FIELDS:
            setattr(self, k, int(d.get(k, 0)))
        for k in ("status", "resolution", "sample_rate", "wrap", "detect_state"):
            setattr(self, k, getattr(self, k) & 0xFF)
        if self.type not in (0, 3, 4):
            self.type = 0
        self.buttons &= 0x1F
        self.dx = max(-4096, min(4096, self.dx))
        self.dy = max(-4096, min(4096, self.dy))
        self.dz = max(-4096, min(4096, self.dz))


class I8042:
    def __init__(self, kbd_irq, aux_irq, reset_cb, a20_cb=None, name="i8042"):
        self.kbd_irq = kbd_irq
        self.aux_irq = aux_irq
        self.reset_cb = reset_cb
        self.a20_cb = a20_cb
        self.name = name
        self.kbd = _Ps2Keyboard(self._kbd_level)
        self.mouse = _Ps2Mouse(self._aux_level)
        self.reset()

    # -- state -------------------------------------------------------------

    def reset(self):
        self.kbd.reset()
        self.mouse.reset()
        self.write_cmd = 0  # controller command waiting for its data byte
        self.mode = MODE_KBD_INT | MODE_MOUSE_INT
        self.status = STAT_CMD | STAT_UNLOCKED
        self.outport = OUT_RESET | OUT_A20 | OUT_ONES
        self.pending = 0
        self.obsrc = 0
        self.obdata = 0
        self.cbdata = 0
        self._deassert_irq()

    _FIELDS = ("write_cmd", "mode", "status", "outport", "pending", "obsrc", "obdata", "cbdata")

    def state(self):
        d = {"version": 1}
        for k in self._FIELDS:
            d[k] = getattr(self, k)
        d["kbd"] = self.kbd.state()
        d["mouse"] = self.mouse.state()
        return d

    def load_state(self, d):
        for k in self._FIELDS:
            setattr(self, k, int(d.get(k, 0)) & 0xFF)
        self.pending &= PENDING_CTRL_KBD | PENDING_CTRL_AUX | PENDING_KBD | PENDING_AUX
        self.obsrc &= OBSRC_KBD | OBSRC_MOUSE | OBSRC_CTRL
        self.status &= ~STAT_IBF & 0xFF
        self.kbd.load_state(d.get("kbd", {}))
        self.mouse.load_state(d.get("mouse", {}))
        self.kbd.translate = 1 if self.mode & MODE_KCC else 0
        self._update_irq_lines()

    # -- output buffer and IRQs (QEMU kbd_update_irq and friends) ----------

    def _update_irq_lines(self):
        kbd_level = 0
        aux_level = 0
        if self.status & STAT_OBF:
            if self.status & STAT_MOUSE_OBF:
                if self.mode & MODE_MOUSE_INT:
                    aux_level = 1
            elif (self.mode & MODE_KBD_INT) and not (self.mode & MODE_DISABLE_KBD):
                kbd_level = 1
        self.kbd_irq.set_level(kbd_level)
        self.aux_irq.set_level(aux_level)

    def _deassert_irq(self):
        self.status &= ~(STAT_OBF | STAT_MOUSE_OBF) & 0xFF
        self.outport &= ~(OUT_OBF | OUT_MOUSE_OBF) & 0xFF
        self._update_irq_lines()

    def _pending(self):
        # A disabled interface holds its device's data back; controller
        # replies always get through.
        return self.pending & ~(self.mode & (PENDING_KBD | PENDING_AUX))

    def _update_irq(self):
        # Latch the highest-priority pending byte: controller reply for the
        # keyboard, for the mouse, keyboard data, mouse data.
        pending = self._pending()
        self.status &= ~(STAT_OBF | STAT_MOUSE_OBF) & 0xFF
        self.outport &= ~(OUT_OBF | OUT_MOUSE_OBF) & 0xFF
        if pending:
            self.status |= STAT_OBF
            self.outport |= OUT_OBF
            if pending & PENDING_CTRL_KBD:
                self.obsrc = OBSRC_CTRL
            elif pending & PENDING_CTRL_AUX:
                self.status |= STAT_MOUSE_OBF
                self.outport |= OUT_MOUSE_OBF
                self.obsrc = OBSRC_CTRL
            elif pending & PENDING_KBD:
                self.obsrc = OBSRC_KBD
            else:
                self.status |= STAT_MOUSE_OBF
                self.outport |= OUT_MOUSE_OBF
                self.obsrc = OBSRC_MOUSE
        self._update_irq_lines()

    def _safe_update_irq(self):
        # A latched byte stays until the guest reads it.
        if self.status & STAT_OBF:
            return
        if self._pending():
            self._update_irq()

    def _kbd_level(self, level):
        if level:
            self.pending |= PENDING_KBD
        else:
            self.pending &= ~PENDING_KBD
        self._safe_update_irq()

    def _aux_level(self, level):
        if level:
            self.pending |= PENDING_AUX
        else:
            self.pending &= ~PENDING_AUX
        self._safe_update_irq()

    def _queue(self, b, aux):
        self.cbdata = b & 0xFF
        self.pending &= ~(PENDING_CTRL_KBD | PENDING_CTRL_AUX)
        self.pending |= PENDING_CTRL_AUX if aux else PENDING_CTRL_KBD
        self._safe_update_irq()

    def _dequeue(self):
        b = self.cbdata
        self.pending &= ~(PENDING_CTRL_KBD | PENDING_CTRL_AUX)
        if self._pending():
            self._update_irq()
        return b

    def _outport_write(self, val):
        self.outport = val & 0xFF
        if self.a20_cb is not None:
            self.a20_cb((val >> 1) & 1)
        if not (val & OUT_RESET):
            self.reset_cb()

    # -- input from the back end -------------------------------------------

    def key_event(self, scancode_bytes):
        """Scancodes (current set, normally 2) from the keyboard back end."""
        self.kbd.key_event(scancode_bytes)

    def mouse_event(self, dx, dy, dz=0, buttons=0):
        """Relative motion (dy > 0 = up) and button state from the mouse back end."""
        self.mouse.event(int(dx), int(dy), int(dz), int(buttons))

    # -- guest access ------------------------------------------------------

    def read(self, offset, size):
        if size not in (1, 2, 4, 8):
            log.guest_error(self.name, "read of size %d at %d" % (size, offset))
            size = 1
        val = 0
        for i in range(size):
            val |= self._read8(offset + i) << (8 * i)
        return val

    def write(self, offset, size, value):
        if size not in (1, 2, 4, 8):
            log.guest_error(self.name, "write of size %d at %d" % (size, offset))
            size = 1
        for i in range(size):
            self._write8(offset + i, (value >> (8 * i)) & 0xFF)

    # -- whole reps to one port (stubdm/ioreq.py): what `count` single byte
    # accesses do, with the controller's interrupt logic run once where
    # repeating it changes nothing.

    def read_rep(self, offset, size, count, buf):
        if size != 1 or offset not in (OFF_DATA, OFF_CMD):
            return False
        i = 0
        if offset == OFF_DATA:
            # Each read with a byte latched takes it (and may latch the next);
            # the queues are short. With none latched a read has no effect.
            while i < count and self.status & STAT_OBF:
                buf[i] = self._read_data()
                i += 1
            v = self.obdata
        else:
            v = self.status  # reading the status has no effect
        if i < count:
            buf[i:count] = bytes((v,)) * (count - i)
        return True

    def write_rep(self, offset, size, count, buf):
        if size != 1 or offset not in (OFF_DATA, OFF_CMD):
            return False
        if offset == OFF_CMD:
            bad = 0
            for i in range(count):
                if not self._write_command(buf[i]):
                    bad += 1
                    last = buf[i]
            if bad:
                log.guest_error(self.name, "%d unsupported controller commands, the last 0x%02x"
                                % (bad, last))
            return True
        i = 0
        while i < count and self.write_cmd != 0:
            self._write_data(buf[i])  # a controller command's data byte, then the keyboard's
            i += 1
        if i == count:
            return True
        # The rest go to the keyboard. Each one's effects on the controller
        # are the same every time (a reply pending, the keyboard interface
        # enabled, the output buffer latched if it was empty): the keyboard
        # takes them all, then the controller sees that once.
        self.kbd.write_many(buf, i, count)
        self.mode &= ~MODE_DISABLE_KBD
        self._safe_update_irq()
        return True

    def _read8(self, offset):
        if offset == OFF_DATA:
            return self._read_data()
        if offset == OFF_CMD:
            return self.status
        log.guest_error(self.name, "read of undecoded offset %d" % offset)
        return 0xFF

    def _write8(self, offset, val):
        if offset == OFF_DATA:
            self._write_data(val)
        elif offset == OFF_CMD:
            if not self._write_command(val):
                log.guest_error(self.name, "unsupported controller command 0x%02x" % val)
        else:
            log.guest_error(self.name, "write of undecoded offset %d" % offset)

    def _read_data(self):
        if self.status & STAT_OBF:
            self._deassert_irq()
            if self.obsrc & OBSRC_KBD:
                self.obdata = self.kbd.read_data()
            elif self.obsrc & OBSRC_MOUSE:
                self.obdata = self.mouse.read_data()
            elif self.obsrc & OBSRC_CTRL:
                self.obdata = self._dequeue()
        return self.obdata

    def _write_data(self, val):
        wc = self.write_cmd
        if wc == 0:
            self.kbd.write(val)
            # Sending to the keyboard re-enables its interface.
            self.mode &= ~MODE_DISABLE_KBD
            self._safe_update_irq()
        elif wc == CCMD_WRITE_MODE:
            self.mode = val
            self.kbd.translate = 1 if val & MODE_KCC else 0
            # The interrupt enables act on the lines at once; clearing a
            # disable bit may let held-back data through.
            self._update_irq_lines()
            self._safe_update_irq()
        elif wc == CCMD_WRITE_OBUF:
            self._queue(val, 0)
        elif wc == CCMD_WRITE_AUX_OBUF:
            self._queue(val, 1)
        elif wc == CCMD_WRITE_OUTPORT:
            self._outport_write(val)
        elif wc == CCMD_WRITE_MOUSE:
            self.mouse.write(val)
            self.mode &= ~MODE_DISABLE_MOUSE
            self._safe_update_irq()
        self.write_cmd = 0

    def _write_command(self, val):
        # 0xF0-0xFF pulse the output port bits whose command bit is 0; only
        # bit 0 (CPU reset) has an effect.
        if (val & CCMD_PULSE_BITS_3_0) == CCMD_PULSE_BITS_3_0:
            val = CCMD_RESET if not (val & 1) else CCMD_NO_OP
        if val == CCMD_READ_MODE:
            self._queue(self.mode, 0)
        elif val in (
            CCMD_WRITE_MODE, CCMD_WRITE_OBUF, CCMD_WRITE_AUX_OBUF, CCMD_WRITE_MOUSE,
            CCMD_WRITE_OUTPORT,
        ):
            self.write_cmd = val
        elif val == CCMD_MOUSE_DISABLE:
            self.mode |= MODE_DISABLE_MOUSE
        elif val == CCMD_MOUSE_ENABLE:
            self.mode &= ~MODE_DISABLE_MOUSE
            self._safe_update_irq()
        elif val == CCMD_TEST_MOUSE:
            self._queue(0x00, 0)
        elif val == CCMD_SELF_TEST:
            self.status |= STAT_SELFTEST
            self._queue(0x55, 0)
        elif val == CCMD_KBD_TEST:
            self._queue(0x00, 0)
        elif val == CCMD_KBD_DISABLE:
            self.mode |= MODE_DISABLE_KBD
        elif val == CCMD_KBD_ENABLE:
            self.mode &= ~MODE_DISABLE_KBD
            self._safe_update_irq()
        elif val == CCMD_READ_INPORT:
            self._queue(0x80, 0)  # keyboard not inhibited
        elif val == CCMD_READ_OUTPORT:
            self._queue(self.outport, 0)
        elif val == CCMD_ENABLE_A20:
            self.outport |= OUT_A20
            if self.a20_cb is not None:
                self.a20_cb(1)
        elif val == CCMD_DISABLE_A20:
            self.outport &= ~OUT_A20 & 0xFF
            if self.a20_cb is not None:
                self.a20_cb(0)
        elif val == CCMD_RESET:
            self.reset_cb()
        elif val == CCMD_NO_OP:
            pass
        else:
            return False  # unsupported: the caller logs it
        return True
