"""The shared helpers: atomic writes (with the umask's permissions), sha256, one-line errors,
the safe checkpoint loader, hardware facts and the training-run bookkeeping."""

import hashlib
import json
import os
import stat

import pytest

from studio import api, plumbing
from studio.errors import StudioError, WeightsError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_umask_permissions_not_0600(tmp_path, umask_022):
    plumbing.write_atomic(tmp_path / "a.bin", b"x")
    with plumbing.atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("y")
    with plumbing.atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside").write_text("z")
    assert mode(tmp_path / "a.bin") == 0o644
    assert mode(tmp_path / "b.txt") == 0o644
    assert mode(tmp_path / "folder") == 0o755
    assert (tmp_path / "folder" / "inside").read_text() == "z"


def test_atomic_writes_follow_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        plumbing.write_atomic(tmp_path / "private", "text")
    finally:
        os.umask(old)
    assert mode(tmp_path / "private") == 0o600


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with plumbing.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with plumbing.atomic_dir(tmp_path / "dir"):
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_atomic_dir_replaces_what_was_there(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old").write_text("1")
    with plumbing.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_sha256_file(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert plumbing.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_one_line():
    assert plumbing.one_line(ValueError("first\nsecond")) == "first"
    assert plumbing.one_line(ValueError("\n  spaced  \nx")) == "spaced"
    assert plumbing.one_line(KeyError()) == "KeyError"
    assert plumbing.one_line(ValueError("abcdef"), 3) == "abc"


def test_the_safe_loader_refuses_pickled_code(tmp_path):
    torch = pytest.importorskip("torch")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2), "step": 3}, good)
    assert plumbing.load_checkpoint(good)["step"] == 3
    evil = tmp_path / "evil.pt"
    torch.save({"f": os.getcwd}, evil)  # a global the weights-only unpickler refuses
    with pytest.raises(WeightsError, match="refused, nothing was executed") as info:
        plumbing.load_checkpoint(evil)
    assert isinstance(info.value, StudioError) and "\n" not in str(info.value)
    (tmp_path / "junk").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="not a checkpoint"):
        plumbing.load_checkpoint(tmp_path / "junk")
    assert plumbing.load_checkpoint(tmp_path / "missing.pt", missing_ok=True) is None
    with pytest.raises(WeightsError, match="no such file"):
        plumbing.load_checkpoint(tmp_path / "missing.pt")


def test_hardware_names_the_machine():
    info = plumbing.hardware()
    assert info["cores"] == os.cpu_count() and info["cpu"] and info["python"]


def test_a_training_run_carries_its_time_across_resumes(tmp_path):
    pytest.importorskip("torch")
    echoed = []
    run = plumbing.TrainingRun(tmp_path, echo=echoed.append)
    assert run.resume() is None and run.prior_seconds == 0.0
    run.started -= 10  # as if this leg had trained for ten seconds
    run.save({"step": 5})
    run.log({"step": 5, "loss": 0.1234567891})
    again = plumbing.TrainingRun(tmp_path)
    state = again.resume()
    assert state["step"] == 5 and again.prior_seconds >= 10 and again.train_seconds >= 10
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 5, "loss": 0.123457}] and echoed == lines


def test_sha256_file_cached_remembers_by_size_and_mtime(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    digest = api.sha256_file_cached(path)
    assert digest == plumbing.sha256_file(path)
    assert str(path.resolve()) in (home / "cache" / "sha256.json").read_text()
    calls = []
    monkeypatch.setattr(plumbing, "sha256_file", lambda p: calls.append(p) or "x")
    assert api.sha256_file_cached(path) == digest and not calls  # remembered: the file is not read
    path.write_bytes(b"b" * 1001)  # new size (and mtime): hashed again
    monkeypatch.undo()
    monkeypatch.setenv("STUDIO_HOME", str(home))
    assert api.sha256_file_cached(path) == hashlib.sha256(b"b" * 1001).hexdigest()
    st = path.stat()
    path.write_bytes(b"c" * 1001)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same size, other mtime: hashed again
    assert api.sha256_file_cached(path) == hashlib.sha256(b"c" * 1001).hexdigest()
    (home / "cache" / "sha256.json").write_text("not json")  # a damaged cache is only a miss
    assert api.sha256_file_cached(path) == hashlib.sha256(b"c" * 1001).hexdigest()


def test_ids_made_together_keep_their_order_and_differ_in_their_short_ids():
    from studio.records import short_id

    ids = [plumbing.new_id() for _ in range(3000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len({short_id(i) for i in ids}) == len(ids)


def test_ids_in_one_frozen_millisecond_stay_ordered_and_roll_over(monkeypatch):
    from ulid import ULID

    from studio.records import short_id

    monkeypatch.setattr(plumbing, "_last_id", (0, 0))
    monkeypatch.setattr(plumbing.time, "time_ns", lambda: 1_800_000_000_000 * 1_000_000)
    ids = [plumbing.new_id() for _ in range(5000)]  # more than fit in one millisecond's 20 bits
    assert ids == sorted(ids) and len({short_id(i) for i in ids}) == len(ids)
    millis = {int(ULID.from_str(i).milliseconds) for i in ids}
    assert min(millis) == 1_800_000_000_000 and len(millis) > 1


@pytest.fixture
def fresh_collector(monkeypatch):
    """The collector as a new process has it: on, nothing frozen, no model loaded yet."""
    import gc

    was = gc.isenabled()
    gc.enable()
    gc.unfreeze()
    monkeypatch.setattr(plumbing, "_collector_frozen", False)
    monkeypatch.setattr(plumbing, "_collector_freeze_asked", False)
    monkeypatch.setattr(plumbing, "_collector_holds", 0)
    monkeypatch.setattr(plumbing, "_collector_import_freeze_asked", False)
    yield gc
    gc.unfreeze()
    (gc.enable if was else gc.disable)()


def test_the_collector_is_off_inside_a_pause_and_back_after_it(fresh_collector):
    gc = fresh_collector
    with plumbing.collector_paused():
        assert not gc.isenabled()
        with plumbing.collector_paused():  # nested: the inner end must not switch it back on
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_leaves_a_collector_switched_off_by_the_program_off(fresh_collector):
    gc = fresh_collector
    gc.disable()
    with plumbing.collector_paused(freeze=True):
        pass
    assert not gc.isenabled()


def test_a_failing_load_switches_the_collector_back_on_and_freezes_nothing(fresh_collector):
    gc = fresh_collector
    with pytest.raises(RuntimeError):
        with plumbing.collector_paused(freeze=True):
            cycle = []
            cycle.append(cycle)  # garbage of the kind a failed load leaves (a traceback's frames)
            del cycle
            raise RuntimeError("broken weights")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # it stays collectable


def test_only_the_first_loaded_model_freezes_what_is_alive(fresh_collector):
    gc = fresh_collector
    kept = []
    with plumbing.collector_paused():  # importing torch: nothing frozen yet
        kept.append([object() for _ in range(100)])
    assert gc.get_freeze_count() == 0
    with plumbing.collector_paused(freeze=True):  # the first model load
        kept.append([[] for _ in range(100)])
    first = gc.get_freeze_count()
    assert first >= 200  # the imports' objects and the model's
    with plumbing.collector_paused(freeze=True):  # a later load in a long-lived worker
        kept.append([[] for _ in range(100)])
    assert gc.get_freeze_count() == first


def test_a_first_heavy_import_freezes_its_objects_before_the_collector_is_back_on(fresh_collector, tmp_path,
                                                                                 monkeypatch):
    import sys

    gc = fresh_collector
    (tmp_path / "heavy_library.py").write_text("import gc\nTABLES = [[i] for i in range(5000)]\n"
                                                "ENABLED_DURING_IMPORT = gc.isenabled()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "heavy_library", None)
    monkeypatch.delitem(sys.modules, "heavy_library")  # imported afresh, and forgotten after the test
    passes = []

    def count(phase, info):
        passes.append(info["generation"])

    gc.callbacks.append(count)  # the list itself: the interpreter holds it, not the attribute
    try:
        module = plumbing.import_paused("heavy_library")
    finally:
        gc.callbacks.remove(count)
    assert not module.ENABLED_DURING_IMPORT and gc.isenabled()
    frozen = gc.get_freeze_count()
    assert frozen >= 5000 and passes == []  # frozen before any pass could walk them
    assert plumbing.import_paused("heavy_library") is module  # already imported: nothing more frozen
    assert gc.get_freeze_count() == frozen
    with plumbing.collector_paused(freeze=True):  # the first model load still freezes its objects
        kept = [[] for _ in range(100)]
    assert gc.get_freeze_count() >= frozen + 100 and kept


def test_a_failing_pause_cancels_a_heavy_imports_freeze_still_waiting(fresh_collector, tmp_path, monkeypatch):
    import sys

    gc = fresh_collector
    (tmp_path / "nested_library.py").write_text("TABLES = [[i] for i in range(100)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "nested_library", None)
    monkeypatch.delitem(sys.modules, "nested_library")  # imported afresh, and forgotten after the test
    with pytest.raises(RuntimeError):
        with plumbing.collector_paused(freeze=True):  # a model load that imports the library, then fails
            plumbing.import_paused("nested_library")
            cycle = []
            cycle.append(cycle)
            del cycle
            raise RuntimeError("broken weights")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_failing_heavy_import_freezes_nothing(fresh_collector, tmp_path, monkeypatch):
    gc = fresh_collector
    (tmp_path / "broken_library.py").write_text("raise ImportError('a missing shared library')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError):
        plumbing.import_paused("broken_library")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_concurrent_pauses_switch_the_collector_on_and_freeze_when_the_last_ends(fresh_collector):
    import threading

    gc = fresh_collector
    inside, release = threading.Barrier(3), threading.Event()

    def pause(freeze):
        with plumbing.collector_paused(freeze=freeze):
            inside.wait()
            release.wait(30)

    threads = [threading.Thread(target=pause, args=(f,)) for f in (True, False)]
    for t in threads:
        t.start()
    inside.wait()
    assert not gc.isenabled() and gc.get_freeze_count() == 0
    release.set()
    for t in threads:
        t.join()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # the load's wish to freeze held until the other pause ended
