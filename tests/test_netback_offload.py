"""host_sim's netback taking netif's checksum and GSO offloads from a frontend, as
Linux's netback does (csum_blank, the GSO extra-info slot), in-process: what it
would hand the TAP is a virtio_net_hdr and the frame; what the frontend gets is
one response per request. And the frontend's hostile variants refused."""
import random
import struct

from host_sim import fuzz_pv
from host_sim.fuzz_pv import gso_extra, netback_rig, put_tx_packet, tcp_packet
from stubdm import pv_abi as A
from stubdm.devices import netutil

CSUM = A.NETTXF_csum_blank | A.NETTXF_data_validated


def serve(nb, ring):
    nb._serve_tx()
    out = []
    while True:
        rsp = ring.get_response()
        if rsp is None:
            return out
        out.append(struct.unpack(A.NETIF_TX_RSP_FMT, rsp))


def vnet(hdr):
    return struct.unpack("<BBHHHH", hdr)  # flags, gso_type, hdr_len, gso_size, start, off


def test_gso_tcpv4_packet_goes_whole_with_its_vnet_header():
    nb, ring, grants = netback_rig()
    frame = tcp_packet(random.Random(1), payload=20000)
    assert put_tx_packet(ring, grants, frame, CSUM, [gso_extra(1448, 1)]) == 6
    rsps = serve(nb, ring)
    # make_tx_response's order: the first request's, NULL for the extra, the rest.
    assert rsps == [(0, 0), (0, A.NETIF_RSP_NULL), (1, 0), (2, 0), (3, 0), (4, 0)]
    ((hdr, sent),) = nb.sent_to_wire
    assert sent == frame  # the kernel segments and sums, not netback
    assert vnet(hdr) == (1, 1, 54, 1448, 34, 16)  # NEEDS_CSUM, TCPV4, at the TCP sum
    assert nb.stats["tx_gso"] == 1 and nb.stats["tx_errors"] == 0


def test_csum_blank_udp_over_ipv6():
    nb, ring, grants = netback_rig()
    frame = tcp_packet(random.Random(2), v4=False, payload=300, udp=True)
    put_tx_packet(ring, grants, frame, CSUM)
    assert serve(nb, ring) == [(0, 0)]
    ((hdr, sent),) = nb.sent_to_wire
    assert vnet(hdr) == (1, 0, 54 + 8, 0, 54, 6) and sent == frame


def test_gso_without_csum_blank_gets_its_pseudo_header_sum():
    # netback's checksum fixup for "buggy peers": CHECKSUM_PARTIAL and the
    # pseudo-header's sum recalculated.
    nb, ring, grants = netback_rig()
    frame = tcp_packet(random.Random(3), payload=5000)
    put_tx_packet(ring, grants, frame, 0, [gso_extra(1000, 1)])
    serve(nb, ring)
    ((hdr, sent),) = nb.sent_to_wire
    h = netutil.parse(sent)
    assert vnet(hdr)[0:2] == (1, 1)
    assert netutil.get16(sent, 50) == netutil.pseudo_sum(sent, h, len(sent) - 34)


def test_frontends_bad_offloads_are_refused_and_the_vif_serves_on():
    rng = random.Random(4)
    good = tcp_packet(rng, payload=3000)
    cases = [
        (good, CSUM, [gso_extra(0, 1)], "GSO size 0"),
        (good, CSUM, [gso_extra(1448, 3)], "GSO type 3"),
        (good, CSUM, [gso_extra(1448, 2)], "GSO type 2 on a packet"),  # TCPV6 on IPv4
        (good, CSUM, [gso_extra(1448, 1, etype=A.XEN_NETIF_EXTRA_TYPE_MCAST_ADD)],
         "extra info type 2 (not negotiated)"),
        (good, CSUM, [gso_extra(1448, 1, A.XEN_NETIF_EXTRA_FLAG_MORE)] * 5,
         "more than 4 extra-info slots"),
        (b"\x00\x16\x3e\x00\x00\x01" * 2 + b"\x08\x06" + bytes(46), CSUM, [],
         "not an untagged IPv4 or IPv6"),  # ARP
        (good[:40], CSUM, [], "no TCP or UDP checksum"),  # cut inside the TCP header
    ]
    for frame, flags, extras, why in cases:
        nb, ring, grants = netback_rig()
        n = put_tx_packet(ring, grants, frame, flags, extras)
        rsps = serve(nb, ring)
        assert len(rsps) == n, why  # every request answered
        assert rsps[0] == (0, A.NETIF_RSP_ERROR), why
        assert nb.sent_to_wire == [] and any(why in m for m in nb.logged), (why, nb.logged)
        put_tx_packet(ring, grants, good, CSUM)  # the vif goes on
        assert serve(nb, ring)[-1] == (0, 0) and len(nb.sent_to_wire) == 1, why


def test_offload_off_refuses_csum_blank_and_takes_plain_frames():
    nb, ring, grants = netback_rig(offload=False)
    assert nb.features()["feature-no-csum-offload"] == 1
    assert "feature-gso-tcpv4" not in nb.features()
    frame = tcp_packet(random.Random(5), payload=100)
    put_tx_packet(ring, grants, frame, CSUM)
    put_tx_packet(ring, grants, frame, 0)
    assert [s for _, s in serve(nb, ring)] == [A.NETIF_RSP_ERROR, 0]
    assert nb.sent_to_wire == [(bytes(10), frame)]


def test_netback_fuzz_target_clean():
    steps, findings = fuzz_pv.run(1500, 7, targets=("netback", "netfront"))
    assert findings == []


def _requests(fe):
    ring = fe.tx
    out = []
    for i in range(ring.in_flight()):
        off = 64 + ((ring.rsp_cons + i) & (ring.size - 1)) * ring.entry
        out.append(bytes(ring.mem[off:off + A.NETIF_TX_REQ_SIZE]))
    return out


def test_netfront_sends_a_gso_packet_as_linux_netfront_does():
    from host_sim.fuzz_pv import connect
    from stubdm.frontends.netfront import NetFront
    from stubdm.net import TX_CSUM, TX_CSUM6, TX_TSO4, TX_TSO6
    fe = connect(NetFront, "vif", "0", {"feature-rx-copy": "1", "feature-sg": "1",
                                        "feature-gso-tcpv4": "1"})
    assert fe.tx_offload == TX_CSUM | TX_TSO4  # no IPv6 checksum offered: no TSO6
    frame = tcp_packet(random.Random(6), payload=9000)
    assert fe.transmit(frame, TX_TSO4, 1448)
    reqs = _requests(fe)
    assert len(reqs) == 4  # three data slots and the extra after the first
    gref, off, flags, rid, size = struct.unpack(A.NETIF_TX_REQ_FMT, reqs[0])
    assert size == len(frame)
    assert flags == CSUM | A.NETTXF_extra_info | A.NETTXF_more_data
    assert struct.unpack_from(A.NETIF_EXTRA_GSO_FMT, reqs[1]) == (
        A.XEN_NETIF_EXTRA_TYPE_GSO, 0, 1448, A.XEN_NETIF_GSO_TYPE_TCPV4, 0)
    assert struct.unpack(A.NETIF_TX_REQ_FMT, reqs[3])[2] == 0  # the last slot
    # What the backend did not offer is not sent.
    assert fe.transmit(frame, TX_TSO6, 1448) and len(_requests(fe)) == 4
    assert fe.stats["tx_dropped"] == 1
    no = connect(NetFront, "vif", "0", {"feature-rx-copy": "1", "feature-sg": "1",
                                        "feature-no-csum-offload": "1",
                                        "feature-gso-tcpv4": "1",
                                        "feature-ipv6-csum-offload": "1"})
    assert no.tx_offload == TX_CSUM6
