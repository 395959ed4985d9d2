"""host_sim's grant tables and event channels hold Xen's rules (xen/common/grant_table.c,
xen/common/event_channel.c): what a backend or a hostile frontend may and may not do."""
import errno

import pytest

from host_sim.evtchn import INTERDOMAIN, UNBOUND, EventChannels, EvtchnError
from host_sim.grants import FIRST_REF, NR_GRANTS, PAGE, GrantError, GrantTables

STUB, DOM0, GUEST, OTHER = 2, 0, 1, 7


@pytest.fixture
def gt():
    t = GrantTables(pages_per_domain=64)
    yield t
    t.close()


def test_grantee_maps_and_sees_the_sharers_writes(gt):
    (ref, page), = gt.share(STUB, DOM0, 1, writable=True)
    assert ref >= FIRST_REF  # Xen's reserved entries are never handed out
    m = gt.map(DOM0, STUB, ref)
    m.mem[0:5] = b"hello"
    assert gt.copy_from(DOM0, STUB, ref, 0, 5) == b"hello"
    m.unmap()


def test_only_the_named_grantee_may_map_or_copy(gt):
    (ref, _), = gt.share(STUB, DOM0, 1, writable=True)
    for mapper in (OTHER, GUEST, STUB):
        with pytest.raises(GrantError) as e:
            gt.map(mapper, STUB, ref)
        assert e.value.errno == errno.EPERM
        with pytest.raises(GrantError):
            gt.copy_from(mapper, STUB, ref, 0, 1)
    assert gt.stats["refused"] == 6


def test_read_only_stays_read_only(gt):
    (ref, _), = gt.share(STUB, DOM0, 1, writable=False)
    with pytest.raises(GrantError) as e:
        gt.map(DOM0, STUB, ref, writable=True)
    assert e.value.errno == errno.EPERM
    with pytest.raises(GrantError):
        gt.copy_to(DOM0, STUB, ref, 0, b"x")
    m = gt.map(DOM0, STUB, ref, writable=False)
    with pytest.raises(TypeError):
        m.mem[0] = 1  # the mapping itself refuses writes
    m.unmap()


@pytest.mark.parametrize("ref", [-1, 0, FIRST_REF - 1, NR_GRANTS, 1 << 40, "8"])
def test_references_out_of_range_or_never_granted(gt, ref):
    with pytest.raises(GrantError):
        gt.map(DOM0, STUB, ref)


def test_ended_grant_is_refused(gt):
    (ref, _), = gt.share(STUB, DOM0, 1, writable=True)
    assert gt.unshare(STUB, ref) == 0
    with pytest.raises(GrantError) as e:
        gt.map(DOM0, STUB, ref)
    assert e.value.errno == errno.ENOENT
    assert gt.unshare(STUB, ref) == -errno.ENOENT  # already ended


def test_a_mapped_grant_is_not_silently_reused(gt):
    (ref, page), = gt.share(STUB, DOM0, 1, writable=True)
    m = gt.map(DOM0, STUB, ref)
    m.mem[0:4] = b"live"
    assert gt.unshare(STUB, ref) == 0  # the sharer lets go while we still map it
    (ref2, page2), = gt.share(STUB, DOM0, 1, writable=True)
    assert ref2 != ref and page2 != page  # neither the entry nor the page is reused
    assert bytes(m.mem[0:4]) == b"live"
    m.unmap()
    (ref3, page3), = gt.share(STUB, DOM0, 1, writable=True)
    assert page3 == page  # now it may be, and it comes back zeroed
    m3 = gt.map(DOM0, STUB, ref3)
    assert bytes(m3.mem[0:4]) == b"\0\0\0\0"
    m3.unmap()


def test_shared_pages_are_the_sharers_own_memory(gt):
    gt.share(STUB, DOM0, 3, writable=True)
    assert set(gt.memory) == {STUB}  # nothing of the guest's
    assert len(gt.memory[STUB].free) == 64 - 3


def test_domain_out_of_memory_takes_nothing(gt):
    with pytest.raises(GrantError) as e:
        gt.share(STUB, DOM0, 65, writable=True)
    assert e.value.errno == errno.ENOMEM
    assert not gt.grants and len(gt.memory[STUB].free) == 64


def test_copy_stays_in_the_page(gt):
    (ref, _), = gt.share(STUB, DOM0, 1, writable=True)
    for off, n in ((PAGE, 1), (PAGE - 1, 2), (-1, 1)):
        with pytest.raises(GrantError):
            gt.copy_from(DOM0, STUB, ref, off, n)


def test_dying_domain_keeps_mapped_grants_until_unmapped(gt):
    (ref, _), (ref2, _) = gt.share(STUB, DOM0, 2, writable=True)
    m = gt.map(DOM0, STUB, ref)
    gt.release_domain(STUB)
    assert (STUB, ref) in gt.grants and (STUB, ref2) not in gt.grants
    m.unmap()
    assert not gt.grants


# ---- event channels ----

def test_interdomain_channel_both_ways():
    ev = EventChannels()
    got = []
    p = ev.alloc_unbound(STUB, DOM0, callback=lambda port: got.append(("stub", port)))
    assert p >= 1
    q = ev.bind_interdomain(DOM0, STUB, p, callback=lambda port: got.append(("dom0", port)))
    ev.send(STUB, p)
    ev.send(DOM0, q)
    assert got == [("dom0", q), ("stub", p)]
    assert ev.get(STUB, p).state == ev.get(DOM0, q).state == INTERDOMAIN


def test_bind_only_a_port_left_unbound_for_us():
    ev = EventChannels()
    p = ev.alloc_unbound(STUB, DOM0)
    for dom, port in ((OTHER, p), (DOM0, p + 1), (DOM0, 0)):
        with pytest.raises(EvtchnError) as e:
            ev.bind_interdomain(dom, STUB, port)
        assert e.value.errno == errno.EINVAL
    ev.bind_interdomain(DOM0, STUB, p)
    with pytest.raises(EvtchnError):
        ev.bind_interdomain(DOM0, STUB, p)  # already bound


def test_send_on_unbound_is_dropped_and_unknown_ports_refused():
    ev = EventChannels()
    p = ev.alloc_unbound(STUB, DOM0)
    ev.send(STUB, p)
    assert ev.stats["dropped"] == 1
    with pytest.raises(EvtchnError):
        ev.send(STUB, 4095)


def test_closing_one_end_leaves_the_other_unbound_for_rebinding():
    ev = EventChannels()
    got = []
    p = ev.alloc_unbound(STUB, DOM0, callback=got.append)
    q = ev.bind_interdomain(DOM0, STUB, p)
    ev.close(DOM0, q)
    assert ev.get(STUB, p).state == UNBOUND
    ev.send(STUB, p)  # silently dropped, as Xen does
    q2 = ev.bind_interdomain(DOM0, STUB, p)  # the backend may come back
    ev.send(DOM0, q2)
    assert got == [p]
    ev.close_domain(STUB)
    assert ev.get(DOM0, q2).state == UNBOUND
