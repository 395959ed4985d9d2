"""The device model's PV frontends: its own disks, NICs and display, over shared rings."""
