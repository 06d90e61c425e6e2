"""The job state machine, storage and cancellation, with the test plugin's generator."""

import threading
import time

import pytest
from PIL import Image as PILImage

from studio import store
from studio.db import Image, Job
from studio.errors import NotFound, UsageError

pytestmark = pytest.mark.usefixtures("testgen_installed")


def pixels(engine, image):
    with PILImage.open(engine.settings.home / image.path) as img:
        return img.tobytes()


def test_submit_then_run_stores_images_with_recipes(engine):
    job = engine.submit("a red square", "testgen", seed=41, count=3, params={"size": "8"})
    assert job.status == "queued" and job.params == {"steps": 2, "size": 8, "delay": 0.0, "fail": ""}
    done = engine.run(job.id)
    assert done.status == "succeeded" and done.attempts == 1 and done.fraction == 1.0
    images = engine.images(job.id)
    assert [i.index for i in images] == [0, 1, 2]
    assert [i.seed for i in images] == [41, 42, 43]
    for image in images:
        recipe = store.read_recipe(engine.settings.home / image.path)
        assert recipe == image.recipe
        assert recipe["prompt"] == "a red square" and recipe["model"] == "testgen"
        assert recipe["seed"] == image.seed and recipe["params"]["size"] == 8
        assert recipe["weights_sha256"] == "0" * 64 and recipe["plugin"] == "testgen"
        assert recipe["core_version"] and recipe["device"] and recipe["dtype"] == "uint8"
        with PILImage.open(engine.settings.home / image.path) as img:
            assert img.size == (8, 8)
            assert img.getpixel((3, 3))[0] > 180  # red asked, red drawn


def test_batching_never_changes_pixels(engine):
    batched = engine.run(engine.submit("p", "testgen", seed=5, count=6).id)  # max_batch 4: batches of 4 and 2
    singles = [engine.run(engine.submit("p", "testgen", seed=5 + k).id) for k in range(6)]
    a = [pixels(engine, i) for i in engine.images(batched.id)]
    b = [pixels(engine, engine.images(j.id)[0]) for j in singles]
    assert a == b
    assert len(set(a)) == 6


def test_same_recipe_gives_the_same_file(engine):
    first = engine.images(engine.run(engine.submit("p", "testgen", seed=9).id).id)[0]
    again = engine.images(engine.run(engine.submit("p", "testgen", seed=9).id).id)[0]
    assert first.sha256 == again.sha256 and first.id != again.id


@pytest.mark.parametrize(
    "fail, message", [("error", "testgen was asked to fail"), ("exception", "RuntimeError: testgen crashed")]
)
def test_a_failing_generator_fails_the_job_and_stores_nothing(engine, fail, message):
    job = engine.run(engine.submit("p", "testgen", params={"fail": fail}, count=2).id)
    assert job.status == "failed" and job.error == message and job.finished_at is not None
    assert engine.images(job.id) == []
    assert not (engine.settings.home / "images").exists() or not any((engine.settings.home / "images").rglob("*.png"))


def test_failure_in_storage_leaves_no_rows(engine, monkeypatch):
    ok = engine.run(engine.submit("kept", "testgen").id)

    def full_disk(*_a, **_k):
        raise OSError("no space left on device")

    monkeypatch.setattr(store, "write_atomic", full_disk)
    job = engine.run(engine.submit("lost", "testgen", seed=123456).id)
    assert job.status == "failed" and "no space left" in job.error
    with engine.db.session() as s:
        assert s.query(Image).count() == 1  # only the earlier job's image
    assert engine.get(ok.id).status == "succeeded" and len(engine.images(ok.id)) == 1


def test_cancel_of_a_queued_job_means_it_never_starts(engine):
    job = engine.submit("p", "testgen")
    assert engine.cancel(job.id).status == "canceled"
    after = engine.run(job.id)
    assert after.status == "canceled" and after.attempts == 0 and engine.images(job.id) == []
    with pytest.raises(UsageError, match="already canceled"):
        engine.cancel(job.id)


def test_cancel_of_a_running_job_stops_it_at_the_next_step(engine):
    job = engine.submit("p", "testgen", params={"steps": 200, "delay": 0.02})
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("job", engine.run(job.id)))
    runner.start()
    deadline = time.monotonic() + 10
    while engine.get(job.id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert engine.cancel(job.id).cancel_requested
    runner.join(timeout=10)
    assert result["job"].status == "canceled"
    assert time.monotonic() - started < 2.0  # 200 steps x 20 ms would be 4 s
    assert engine.images(job.id) == []


def test_progress_is_recorded_while_running(engine):
    seen = []
    job = engine.submit("p", "testgen", count=6, params={"steps": 3})
    engine.run(job.id, on_progress=lambda _job, fraction: seen.append(fraction))
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert seen == sorted(seen)


def test_retry_puts_a_failed_job_back_and_it_can_succeed(engine):
    job = engine.run(engine.submit("p", "testgen", params={"fail": "error"}).id)
    assert job.status == "failed"
    with engine.db.session() as s:
        s.get(Job, job.id).params = {**job.params, "fail": ""}
    again = engine.retry(job.id)
    assert again.status == "queued" and again.error is None and again.attempts == 0
    assert engine.run(job.id).status == "succeeded"
    with pytest.raises(UsageError, match="only failed or canceled"):
        engine.retry(job.id)


def test_claim_is_exclusive_and_attempts_are_counted(engine):
    job = engine.submit("p", "testgen")
    assert engine.claim(job.id, "w1") is not None
    assert engine.claim(job.id, "w2") is None  # someone else has it
    again = engine.claim(job.id, "w2", reclaim_running=True)  # its worker died; redelivered
    assert again.worker_id == "w2" and again.attempts == 2


def test_a_job_that_keeps_killing_workers_is_quarantined(engine):
    job = engine.submit("p", "testgen")
    for worker in ("w1", "w2", "w3"):
        assert engine.claim(job.id, worker, reclaim_running=True) is not None
    assert engine.claim(job.id, "w4", reclaim_running=True) is None
    final = engine.get(job.id)
    assert final.status == "failed" and "quarantined after 3 attempts" in final.error


def test_a_result_from_a_worker_that_lost_the_job_is_dropped(engine):
    job = engine.submit("p", "testgen")
    engine.claim(job.id, "old")
    engine.claim(job.id, "new", reclaim_running=True)
    late = engine.runner.execute([engine.get(job.id)], "old", "cpu", None, raise_unavailable=False)[0]
    assert late.worker_id == "new" and late.status == "running"
    assert engine.images(job.id) == []


def test_job_finished_event_reaches_plugins_and_listener_errors_do_not_matter(engine):
    from studio_testgen.plugin import FINISHED_EVENTS

    job = engine.run(engine.submit("p", "testgen", count=2).id)
    assert (job.id, "succeeded", 2) in FINISHED_EVENTS  # broken-register's listener raised too
    assert engine.get(job.id).status == "succeeded"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"prompt": "x" * 2001}, "limit is 2000"),
        ({"model_id": "nope"}, "unknown model 'nope'"),
        ({"seed": -1}, "seed must be between"),
        ({"seed": 2**63}, "seed must be between"),
        ({"count": 0}, "count must be between"),
        ({"params": {"size": "2"}}, "must be >= 4"),
    ],
)
def test_bad_submissions_store_nothing(engine, kwargs, message):
    args = {"prompt": "p", "model_id": "testgen", **kwargs}
    with pytest.raises(UsageError, match=message):
        engine.submit(args.pop("prompt"), args.pop("model_id"), **args)
    assert engine.list_jobs() == []


def test_unknown_ids_and_prefixes(engine):
    job = engine.submit("p", "testgen")
    assert engine.get(job.id[:20].lower()).id == job.id
    with pytest.raises(NotFound):
        engine.get("01XXXXXXXXXXXXXXXXXXXXXXXX")


def test_generator_is_loaded_once_per_process(engine):
    from studio_testgen.plugin import LOADS

    before = len(LOADS)
    for _ in range(3):
        engine.run(engine.submit("p", "testgen").id)
    assert len(LOADS) - before <= 1


def test_a_killed_local_run_is_marked_failed_not_left_running(engine, studio_home):
    import os
    import signal
    import subprocess
    import sys

    job = engine.submit("p", "testgen", params={"steps": 1000, "delay": 0.05})
    code = (
        "import sys; from studio.config import load_settings; from studio.engine import Engine\n"
        "Engine(load_settings()).run(sys.argv[1])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, job.id], env=dict(os.environ, STUDIO_HOME=str(studio_home)))
    deadline = time.monotonic() + 30
    while engine.get(job.id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert engine.get(job.id).status == "running"
    assert engine.reap_orphans() == [job.id]
    final = engine.get(job.id)
    assert final.status == "failed" and "interrupted" in final.error
    assert engine.reap_orphans() == []
