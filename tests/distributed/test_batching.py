"""Dynamic batching: several queued jobs share one generate() call, pixels unchanged."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from PIL import Image

from studio.engine import Engine
from tests.distributed.conftest import submit

pytestmark = pytest.mark.usefixtures("testgen_installed")


def pixels(engine: Engine, job_id: str) -> list[bytes]:
    out = []
    for image in engine.images(job_id):
        with Image.open(engine.settings.home / image.path) as img:
            out.append(img.convert("RGB").tobytes())
    return out


def unbatched_pixels(settings, tmp_path, jobs) -> dict[str, list[bytes]]:
    """The same jobs run one by one, in-process, in a separate home and database."""
    home = tmp_path / "unbatched"
    alone = Engine(replace(settings, home=home, database_url=f"sqlite:///{home / 'studio.db'}", broker_url=None))
    result = {}
    for job in jobs:
        again = alone.submit(job.prompt, job.model_id, seed=job.seed, count=job.count, params=job.params)
        assert alone.run(again.id).status == "succeeded"
        result[job.id] = pixels(alone, again.id)
    alone.db.dispose()
    return result


def batches(log_path) -> list[list[str]]:
    return [line.split("|") for line in log_path.read_text().splitlines()]


def test_worker_batches_queued_jobs_and_pixels_match_unbatched_runs(cluster, engine, settings, tmp_path):
    log = tmp_path / "batches.log"
    cluster.env["STUDIO_TESTGEN_BATCH_LOG"] = str(log)
    same = [submit(engine, f"blue batch {i}", count=1 + (i == 0), size=8) for i in range(7)]
    other = [submit(engine, f"red other {i}", size=6) for i in range(2)]  # other parameters: never mixed in
    cluster.start_worker("--batch", "8")
    for job in same + other:
        assert engine.wait(job.id, timeout=60).status == "succeeded", cluster.logs()

    seen = batches(log)
    assert max(len(b) for b in seen) == 4  # testgen's max_batch
    assert sum(len(b) for b in seen) == 10
    assert all(len({p.split()[0] for p in b}) == 1 for b in seen)  # blue and red never share a batch
    reference = unbatched_pixels(settings, tmp_path, [engine.get(j.id) for j in same + other])
    for job in same + other:
        assert pixels(engine, job.id) == reference[job.id]


def test_run_batch_shares_one_call_and_matches_separate_runs(engine, settings, tmp_path, monkeypatch):
    log = tmp_path / "batches.log"
    monkeypatch.setenv("STUDIO_TESTGEN_BATCH_LOG", str(log))
    jobs = [engine.submit(f"green {i}", "testgen", seed=100 + i, params={"size": 8}) for i in range(3)]
    extra = engine.submit("green big", "testgen", seed=7, count=2, params={"size": 8})  # no room left after 3 + 2 > 4
    finals = engine.run_batch(jobs[0].id, worker_id="w:1", max_jobs=8)
    assert [f.id for f in finals[:3]] == [j.id for j in jobs] and {f.status for f in finals} == {"succeeded"}
    assert batches(log) == [["green 0", "green 1", "green 2"]]
    assert engine.get(extra.id).status == "queued"
    reference = unbatched_pixels(settings, tmp_path, jobs)
    for job in jobs:
        assert pixels(engine, job.id) == reference[job.id]
    assert engine.images(jobs[1].id)[0].recipe["seed"] == 101


def test_a_failing_request_fails_only_its_own_job(engine):
    params = {"fail": "poison-word"}
    jobs = [engine.submit(prompt, "testgen", params=params) for prompt in ("fine one", "a poison pill", "fine two")]
    finals = {f.id: f for f in engine.run_batch(jobs[0].id, worker_id="w:1", max_jobs=3)}
    assert [finals[j.id].status for j in jobs] == ["succeeded", "failed", "succeeded"]
    assert finals[jobs[1].id].error == "testgen was handed the word poison"
    assert [len(engine.images(j.id)) for j in jobs] == [1, 0, 1]


def test_canceling_one_job_of_a_batch_leaves_the_others_running(engine):
    jobs = [engine.submit(f"slow {i}", "testgen", params={"steps": 30, "delay": 0.05}) for i in range(3)]

    def cancel_later():
        deadline = time.monotonic() + 10
        while engine.get(jobs[1].id).status != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        engine.cancel(jobs[1].id)

    canceler = threading.Thread(target=cancel_later)
    canceler.start()
    finals = {f.id: f for f in engine.run_batch(jobs[0].id, worker_id="w:1", max_jobs=3)}
    canceler.join()
    assert [finals[j.id].status for j in jobs] == ["succeeded", "canceled", "succeeded"]
    assert finals[jobs[1].id].error == "canceled while running"
    assert [len(engine.images(j.id)) for j in jobs] == [1, 0, 1]


def test_canceling_every_job_of_a_batch_stops_the_generator(engine):
    jobs = [engine.submit(f"slow {i}", "testgen", params={"steps": 200, "delay": 0.02}) for i in range(2)]

    def cancel_all():
        time.sleep(0.5)
        for job in jobs:
            engine.cancel(job.id)

    canceler = threading.Thread(target=cancel_all)
    canceler.start()
    started = time.monotonic()
    finals = engine.run_batch(jobs[0].id, worker_id="w:1", max_jobs=2)
    canceler.join()
    assert [f.status for f in finals] == ["canceled", "canceled"]
    assert time.monotonic() - started < 3  # not the 4 s the generator would take
