"""stubdm-sim fuzz: a structure-aware fuzzer for the device models (in progress)."""


def add_command(sub, common):
    fz = sub.add_parser("fuzz", help="fuzz every device model in-process")
    fz.set_defaults(func=lambda args: 1)
