"""A job's priority (higher first) reaches the broker: waiting high-priority jobs run first."""

from __future__ import annotations

from studio.executors.celery import broker_priority, enqueue


def test_priority_maps_to_redis_order():
    assert broker_priority(0) == 3 and broker_priority(5) == 0 and broker_priority(-9) == 9
    assert broker_priority(1) < broker_priority(0) < broker_priority(-1)


def test_higher_priority_jobs_start_first(cluster, engine):
    low = [engine.submit(f"low {i}", "testgen", params={"size": 4}, priority=-5) for i in range(3)]
    high = [engine.submit(f"high {i}", "testgen", params={"size": 4}, priority=5) for i in range(3)]
    for job in low + high:  # the low ones reach the broker first
        enqueue(engine.settings, job)
    cluster.start_worker()
    finals = [engine.wait(job.id, timeout=60) for job in low + high]
    assert {f.status for f in finals} == {"succeeded"}, cluster.logs()
    assert max(f.started_at for f in finals[3:]) < min(f.started_at for f in finals[:3])
