"""host_sim's PV backends: the dom0 side of the stub domain's disks, NICs and display."""
