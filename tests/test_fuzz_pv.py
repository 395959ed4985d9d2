"""The PV frontends against a hostile backend (host_sim/fuzz_pv.py): nothing escapes,
nothing hangs, nothing completes twice or out of nowhere."""
import pytest

from host_sim import fuzz_pv
from stubdm import block


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hostile_backend_finds_nothing(seed):
    n, findings = fuzz_pv.run(3000, seed)
    assert n == 6000 and findings == []


def test_fuzzer_catches_a_double_completion(monkeypatch):
    # A planted bug: blkfront reports every piece done twice.
    from stubdm.frontends import blkfront

    orig = blkfront.BlkFront._piece_done

    def twice(self, piece, err):
        orig(self, piece, err)
        piece.job.left += 1
        orig(self, piece, err)
    monkeypatch.setattr(blkfront.BlkFront, "_piece_done", twice)
    _, findings = fuzz_pv.run(2000, 1, targets=("blkfront",))
    assert findings and "twice" in findings[0][2]


def test_fuzzer_catches_an_escaping_exception(monkeypatch):
    from stubdm.frontends import netfront

    def boom(self, rsp):
        raise IndexError("planted")
    monkeypatch.setattr(netfront.NetFront, "_rx_slot", boom)
    _, findings = fuzz_pv.run(2000, 1, targets=("netfront",))
    assert findings and "IndexError" in findings[0][2]


def test_unanswered_io_is_never_reported_ok():
    rng = __import__("random").Random(5)
    t = fuzz_pv.BlkTarget(rng)
    seen = []
    buf = memoryview(bytearray(4096))
    t.fe.submit(block.READ, 0, [buf], seen.append)
    t.fe.on_event(t.fe.port)  # an event with no response behind it
    assert seen == []
