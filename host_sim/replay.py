"""stubdm-sim replay: replay QEMU's access trace against stubdm (in progress)."""


def add_command(sub, common):
    rp = sub.add_parser("replay", parents=[common], help="replay a QEMU access trace")
    rp.set_defaults(func=lambda args: 1)
