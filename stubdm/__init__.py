"""stubdm: a device model for Xen HVM guests, in Python that runs on MicroPython."""
