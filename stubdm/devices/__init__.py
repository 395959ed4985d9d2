"""Device models.

Conventions every device follows (see ../shared/STYLE.md):

- One device per module. Register offsets are named constants at the top,
  with the datasheet section they come from.
- A device core is a bus-agnostic state machine:
      read(offset, size) -> int      (size 1, 2 or 4; 8 only where the device has it)
      write(offset, size, value)
  `offset` is relative to the device's own window. Attaching it to ISA ports
  or to a PCI BAR is a thin layer elsewhere (stubdm.bus, stubdm.pci).
- Side effects go through objects handed in at construction: an IRQ line
  (stubdm.irq.IrqLine: set_level(0|1)), a character back end, a reset
  callback. A device never imports a frontend, the ioreq loop or a platform.
- Every value from the guest is range-checked; misuse is reported with
  stubdm.log.guest_error(name, msg) and survived. A read the device does not
  decode returns all ones for its size; a write it does not decode is dropped.
- State that save/restore would need lives in plain attributes that
  `state()` returns as a dict and `load_state(d)` takes back.
- Code here runs on MicroPython: ../shared/PORTABLE_PYTHON.md.
"""
