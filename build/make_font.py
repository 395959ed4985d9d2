"""Make the VGA's character ROM from a Debian console font, at build time.

The VGA BIOS loads an 8x16 font into plane 2 at every text mode set; stubdm
loads the same kind of font into plane 2 at power-on (stubdm/devices/vga.py),
so that a guest which programs the VGA without a BIOS still has glyphs. The
glyphs come from console-setup-linux's FullGreek-VGA16 (a PSF1 font with a Unicode
table), put in code page 437 order, as a VGA's ROM has them.

Output: build/out/vgafont.bin, 256 glyphs x 16 rows, one byte a row, bit 7
leftmost. Not committed; SCons runs this (target `vgafont`).
Usage: python3 build/make_font.py [PSF_GZ] [OUT]
"""
import gzip
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FONT = "/usr/share/consolefonts/FullGreek-VGA16.psf.gz"
OUT = os.path.join(ROOT, "build", "out", "vgafont.bin")
HEIGHT = 16

PSF1_MAGIC = b"\x36\x04"
PSF1_MODE512 = 0x01
PSF1_MODEHASTAB = 0x02
PSF1_SEPARATOR = 0xFFFF
PSF1_STARTSEQ = 0xFFFE
PSF2_MAGIC = b"\x72\xb5\x4a\x86"

# Code page 437's pictures for 0x01-0x1f and 0x7f (Python's cp437 codec
# decodes those bytes as control characters).
CP437_LOW = (
    0x0000, 0x263A, 0x263B, 0x2665, 0x2666, 0x2663, 0x2660, 0x2022,
    0x25D8, 0x25CB, 0x25D9, 0x2642, 0x2640, 0x266A, 0x266B, 0x263C,
    0x25BA, 0x25C4, 0x2195, 0x203C, 0x00B6, 0x00A7, 0x25AC, 0x21A8,
    0x2191, 0x2193, 0x2192, 0x2190, 0x221F, 0x2194, 0x25B2, 0x25BC,
)
CP437_DEL = 0x2302


def cp437_codepoint(byte):
    if byte < 0x20:
        return CP437_LOW[byte]
    if byte == 0x7F:
        return CP437_DEL
    return ord(bytes([byte]).decode("cp437"))


def parse_psf(data):
    """(height, glyph bitmaps (list of bytes, rows of one byte), {codepoint: glyph})."""
    if data[:2] == PSF1_MAGIC:
        mode, height = data[2], data[3]
        count = 512 if mode & PSF1_MODE512 else 256
        glyphs = [data[4 + i * height : 4 + (i + 1) * height] for i in range(count)]
        table = {}
        if mode & PSF1_MODEHASTAB:
            pos = 4 + count * height
            glyph = 0
            in_seq = False
            while pos + 1 < len(data) and glyph < count:
                u = data[pos] | data[pos + 1] << 8
                pos += 2
                if u == PSF1_SEPARATOR:
                    glyph += 1
                    in_seq = False
                elif u == PSF1_STARTSEQ:
                    in_seq = True  # combining sequences: not single code points
                elif not in_seq:
                    table.setdefault(u, glyph)
        return height, glyphs, table
    if data[:4] == PSF2_MAGIC:
        raise SystemExit("make_font: PSF2 fonts are not supported; use a PSF1 VGA font")
    raise SystemExit("make_font: not a PSF font")


def build(src=FONT, out=OUT):
    with gzip.open(src) as f:
        height, glyphs, table = parse_psf(f.read())
    if height != HEIGHT:
        raise SystemExit("make_font: %s is 8x%d, want 8x%d" % (src, height, HEIGHT))
    rom = bytearray(256 * HEIGHT)
    missing = []
    for byte in range(256):
        cp = cp437_codepoint(byte)
        g = table.get(cp)
        if g is None:
            if cp:
                missing.append(byte)
            continue  # no glyph: blank, as a space
        rom[byte * HEIGHT : (byte + 1) * HEIGHT] = glyphs[g]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(rom)
    os.replace(tmp, out)
    if missing:
        print("make_font: no glyph for %d code page 437 characters: %s"
              % (len(missing), " ".join("%02x" % b for b in missing)))
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    build(*args)
