# Interrupt lines handed to devices. A device only ever calls set_level();
# where the level goes (an ISA IRQ, a PCI INTx pin, a test recorder) is the
# platform's business (DESIGN.md section 4).


class IrqLine:
    """A level-triggered line. `sink(level)` is called only when the level changes."""

    def __init__(self, sink=None):
        self.level = 0
        self.sink = sink

    def set_level(self, level):
        level = 1 if level else 0
        if level != self.level:
            self.level = level
            if self.sink is not None:
                self.sink(level)

    def raise_(self):
        self.set_level(1)

    def lower(self):
        self.set_level(0)
