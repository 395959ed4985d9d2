"""A private network namespace for one run, and TAP devices inside it (DESIGN.md 16).

The namespace is held by an `unshare -n sleep` child with a parent-death signal: it
vanishes with the run, TAPs and all, even when the run is killed with SIGKILL (a TAP
fd alone would keep it alive: every child gets a parent-death signal, and our own TAP
fds close when we die). Nothing here touches the host's own network.

A root-namespace process opens a TAP inside by entering the namespace for the one
call that creates it (setns on this thread, open /dev/net/tun, TUNSETIFF, setns
back), and checks the device really is in there: in the wrong namespace TUNSETIFF
silently makes an unconnected TAP.
"""
import ctypes
import fcntl
import os
import signal
import struct
import subprocess
import time

from host_sim.qtest_qemu import die_with_parent

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # every frame read or written carries a virtio_net_hdr first
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    pass


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise NetnsError("setns: %s" % os.strerror(e))


class Namespace:
    """The run's network namespace. .run(cmd) runs a command inside it."""

    def __init__(self):
        if not os.path.exists("/dev/net/tun"):
            raise NetnsError("no /dev/net/tun (mknod /dev/net/tun c 10 200)")
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "1000000"],
                                       preexec_fn=die_with_parent,
                                       stdin=subprocess.DEVNULL)
        self.path = "/proc/%d/ns/net" % self.holder.pid
        mine = os.readlink("/proc/self/ns/net")
        for _ in range(200):
            try:
                if os.readlink(self.path) != mine:
                    break
            except OSError:
                pass
            if self.holder.poll() is not None:
                raise NetnsError("unshare -n failed (exit %d): no network namespaces?"
                                 % self.holder.returncode)
            time.sleep(0.01)
        else:
            self.close()
            raise NetnsError("the namespace never appeared")
        self.run(["ip", "link", "set", "lo", "up"])

    def run(self, cmd, check=True, **kw):
        """cmd inside the namespace (nsenter --net; /sys is not remounted there)."""
        r = subprocess.run(["nsenter", "--net=" + self.path] + cmd, capture_output=True,
                           text=True, preexec_fn=die_with_parent, **kw)
        if check and r.returncode != 0:
            raise NetnsError("%s: %s" % (" ".join(cmd), r.stderr.strip()))
        return r

    def popen(self, cmd, **kw):
        return subprocess.Popen(["nsenter", "--net=" + self.path] + cmd,
                                preexec_fn=die_with_parent, **kw)

    def open_tap(self, name, address=None, vnet_hdr=False):
        """A TAP device inside the namespace, up (with address, e.g. "10.0.2.2/24"):
        returns its fd (non-blocking), ours to close. vnet_hdr: every frame read
        and written starts with a 10-byte virtio_net_hdr (IFF_VNET_HDR), which
        lets a writer hand the kernel a GSO packet or one with its checksum to
        be filled (as Linux's netback hands a GSO skb to the stack)."""
        if len(name) >= 16:
            raise NetnsError("TAP name %r is too long" % name)
        mine = os.open("/proc/self/ns/net", os.O_RDONLY)
        theirs = os.open(self.path, os.O_RDONLY)
        fd = -1
        try:
            _setns(theirs)
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            finally:
                _setns(mine)
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            ifr = struct.pack("16sH22x", name.encode(), flags)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except Exception:
            if fd >= 0:
                os.close(fd)
            raise
        finally:
            os.close(mine)
            os.close(theirs)
        # The TAP must be the namespace's, not a stray one of ours.
        if self.run(["ip", "link", "show", name], check=False).returncode != 0:
            os.close(fd)
            raise NetnsError("TAP %s did not appear in the namespace" % name)
        self.run(["ip", "link", "set", name, "up"])
        if address:
            self.run(["ip", "addr", "add", address, "dev", name])
        return fd

    def close(self):
        if self.holder.poll() is None:
            self.holder.send_signal(signal.SIGKILL)
            self.holder.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
