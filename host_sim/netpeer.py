"""The peer a guest's NIC talks to, inside the run's private network namespace.

Run there by the engine (`python -m host_sim.netpeer ADDR`, through nsenter, with a
parent-death signal); one TCP server on ADDR:5001 whose first line says what to do:
  sink            read until the guest closes; answer "<bytes> <sha256>" (a guest's
                  upload, checked end to end)
  source N SEED   send N bytes of SEED's deterministic stream, then close (a download)
  ping ADDR N     ping ADDR N times from here and answer ping's exit status (the
                  peer reaching the guest: the other way round)
Each connection is served in its own thread (the guest may hold one open while it
asks for another). CPython only.
"""
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading

PORT = 5001
CHUNK = 1 << 16


def stream(seed, n):
    """SEED's stream: sha256 counter blocks, so both ends can make it without storing it."""
    out = 0
    block = 0
    while out < n:
        chunk = b"".join(hashlib.sha256(b"%d:%d:%d" % (seed, block, i)).digest()
                         for i in range(CHUNK // 32))
        block += 1
        take = min(len(chunk), n - out)
        yield chunk[:take]
        out += take


def stream_sha(seed, n):
    h = hashlib.sha256()
    for c in stream(seed, n):
        h.update(c)
    return h.hexdigest()


def _line(conn):
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        c = conn.recv(1)
        if not c:
            break
        data += c
    return data.decode(errors="replace").strip()


def serve(conn):
    with conn:
        words = _line(conn).split()
        if not words:
            return
        if words[0] == "sink":
            h = hashlib.sha256()
            n = 0
            while True:
                c = conn.recv(CHUNK)
                if not c:
                    break
                h.update(c)
                n += len(c)
            try:
                conn.sendall(b"%d %s\n" % (n, h.hexdigest().encode()))
            except OSError:
                pass
        elif words[0] == "source" and len(words) == 3:
            for c in stream(int(words[2]), int(words[1])):
                conn.sendall(c)
        elif words[0] == "ping" and len(words) == 3:
            r = subprocess.run(["ping", "-c", words[2], "-W", "3", words[1]],
                               capture_output=True)
            conn.sendall(b"%d\n" % r.returncode)


def main(argv):
    addr = argv[1]
    # Die with the engine even if it is killed.
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, PORT))
    srv.listen(8)
    os.write(1, b"ready\n")
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
