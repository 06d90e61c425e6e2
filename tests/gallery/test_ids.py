"""Ids: every command takes a job or an image id (or a unique prefix) and says which it found;
short ids shown are prefixes that resolve; a prefix never acts as a LIKE pattern."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from studio.db import Job
from studio.engine import locate
from studio.errors import NotFound, UsageError
from studio.records import short_id


def test_show_wait_cancel_retry_take_an_image_id(run, engine, make):
    job = make("a red circle", count=2, seed=1)
    image = engine.images(job.id)[1]
    out = run("show", image.id)
    assert out.exit_code == 0 and f"{image.id} is image 1 of job {job.id}" in out.stderr
    assert image.id in out.stdout and engine.images(job.id)[0].id not in out.stdout  # only that image
    data = json.loads(run("show", image.id, "--json").stdout)
    assert data["id"] == job.id and data["found"] == {"image": image.id} and len(data["images"]) == 1
    assert run("wait", image.id.lower(), "--json").exit_code == 0
    cancel = run("cancel", image.id)
    assert cancel.exit_code == 2 and "has already succeeded" in cancel.stderr and f"of job {job.id}" in cancel.stderr
    retry = run("retry", image.id)
    assert retry.exit_code == 2 and f"job {job.id} has succeeded" in retry.stderr


def test_gallery_plain_ids_work_with_show(run, engine, make):
    make("a blue square", seed=3)
    listed = run("gallery", "--plain").stdout
    image = engine.images(engine.list_jobs()[0].id)[0]
    assert image.id in listed or short_id(image.id) in listed
    assert run("show", short_id(image.id)).exit_code == 0


def test_short_ids_of_jobs_made_together_resolve(run, engine, make):
    jobs = [make(f"thing {k}", seed=k) for k in range(6)]
    listed = run("jobs").stdout
    for job in jobs:
        assert short_id(job.id) in listed
        assert engine.lookup(short_id(job.id))[0].id == job.id


def test_a_prefix_is_only_a_prefix(engine):
    ids = {"01ABCD_X%YZ000000000000000": None, "01ABCDEXQYZ000000000000000": None}
    for new_id in ids:  # queued jobs (no image rows point at them), renamed to ids a wildcard would match
        job = engine.submit("a green tree", "testgen", seed=2)
        with engine.db.session() as session:
            session.execute(update(Job).where(Job.id == job.id).values(id=new_id))
    with engine.db.session() as session:
        assert locate(session, "01ABCD_X%")[0].id == "01ABCD_X%YZ000000000000000"
        assert locate(session, "01ABCDE")[0].id == "01ABCDEXQYZ000000000000000"
        with pytest.raises(NotFound):
            locate(session, "01ABCD%")  # as a LIKE pattern this would match both
        with pytest.raises(NotFound):
            locate(session, "0_AB")
        with pytest.raises(UsageError, match="ambiguous"):
            locate(session, "01ABCD")
