"""regen, vary, verify, lineage and delete, through the CLI and the actions module."""

from __future__ import annotations

import json

from sqlalchemy import select

from studio.db import Image, Job
from studio.gallery import actions
from studio.gallery.lineage import lineage


def test_regen_of_an_image_is_an_exact_child(run, engine, make):
    job = make("a red circle", count=3, seed=7)
    image = engine.images(job.id)[1]
    out = json.loads(run("regen", image.id, "--json").stdout)
    assert out["parent_id"] == job.id and out["seed"] == 8 and out["count"] == 1
    assert out["images"][0]["sha256"] == image.sha256  # same recipe, same bytes


def test_regen_with_changes_and_of_a_whole_job(run, engine, make):
    job = make("a blue square", count=2, seed=3)
    changed = json.loads(run("regen", job.id, "--seed", "50", "-p", "size=12", "--json").stdout)
    assert changed["parent_id"] == job.id and changed["count"] == 2 and changed["seed"] == 50
    assert changed["params"]["size"] == 12 and changed["images"][0]["width"] == 12
    assert run("regen", job.id, "-p", "size=big").exit_code == 2
    assert run("regen", "01ZZZZZZZZZZZZZZZZZZZZZZZZ").exit_code == 1


def test_vary_makes_children_with_other_seeds(run, engine, make):
    job = make("a green tree", seed=5)
    out = json.loads(run("vary", job.id, "-n", "4", "--json").stdout)
    assert out["parent_id"] == job.id and out["count"] == 4
    seeds = [i["seed"] for i in out["images"]]
    assert len(set(seeds)) == 4 and 5 not in seeds
    fixed = json.loads(run("vary", job.id, "-n", "2", "--seed", "100", "--json").stdout)
    assert [i["seed"] for i in fixed["images"]] == [100, 101]


def test_verify_matches_bit_for_bit_on_cpu(run, engine, make):
    job = make("a red circle", count=2, seed=11)
    result = run("regen", job.id, "--verify", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["device"] == "cpu" and [i["match"] for i in report["images"]] == [True, True]
    assert engine.get(report["job"]["id"]).parent_id == job.id
    text = run("regen", engine.images(job.id)[0].id, "--verify")
    assert text.exit_code == 0 and "matches bit for bit" in text.stderr
    assert run("regen", job.id, "--verify", "--seed", "1").exit_code == 2


def test_verify_explains_changed_weights_and_differences(run, engine, make):
    job = make("a red circle", seed=1)
    with engine.db.session() as session:
        image = session.scalars(select(Image).where(Image.job_id == job.id)).one()
        image.recipe = {**image.recipe, "weights_sha256": "f" * 64}
    result = run("regen", job.id, "--verify")
    assert result.exit_code == 1
    assert "weights of model 'testgen' changed" in result.stderr and "ffffffffffff" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output

    other = make("a blue circle", seed=2)
    with engine.db.session() as session:  # same weights, but the stored hash says the pixels were other ones
        image = session.scalars(select(Image).where(Image.job_id == other.id)).one()
        image.sha256 = "0" * 64
        image.recipe = {**image.recipe, "core_version": "0.0.1"}
    result = run("regen", other.id, "--verify")
    assert result.exit_code == 1 and "1 of 1 images differ" in result.stderr
    assert "core_version: 0.0.1" in result.stderr and "differs" in result.stdout


def test_failed_job_cannot_be_verified_but_can_be_regenerated(run, engine, make):
    failed = make("broken", fail="error")
    result = run("regen", failed.id, "--verify")
    assert result.exit_code == 1 and "has no images to compare with" in result.stderr
    assert run("regen", failed.id, "-p", "fail=").exit_code == 0


def test_lineage_tree(run, engine, make):
    root = make("a red circle", seed=1)
    child = json.loads(run("regen", root.id, "-p", "size=10", "--json").stdout)
    grandchild = json.loads(run("vary", child["id"], "-n", "2", "--json").stdout)
    sibling = json.loads(run("vary", root.id, "-n", "1", "--json").stdout)
    family = lineage(engine.db, grandchild["images"][0]["id"])  # an image id names its job
    assert family.root.job_id == root.id and family.focus == grandchild["id"] and family.size == 4
    assert [c.job_id for c in family.root.children] == [child["id"], sibling["id"]]
    assert family.root.children[0].changes_from(family.root) == ["size=10"]
    tree = json.loads(run("show", child["id"], "--tree", "--json").stdout)
    assert tree["root"]["job_id"] == root.id and tree["focus"] == child["id"]
    assert tree["root"]["children"][0]["children"][0]["job_id"] == grandchild["id"]
    text = run("show", root.id, "--tree").stdout
    assert all(j in text for j in (root.id, child["id"], grandchild["id"], sibling["id"])) and "size=10" in text


def test_delete_keeps_shared_files_until_the_last_row(engine, make, stored_files):
    first = make("same pixels", seed=3)
    second = make("same pixels", seed=3)  # same recipe: the same file, two rows
    other = make("other", count=2, seed=9)
    shared = engine.images(first.id)[0]
    assert engine.images(second.id)[0].sha256 == shared.sha256
    assert len(stored_files()) == 3

    done = actions.delete(engine, [shared.id])
    assert (done.images, done.jobs, done.files_removed, done.files_kept) == (1, 1, 0, 1)
    assert shared.path in stored_files()
    done = actions.delete(engine, [second.id])  # a job id: the job and its images
    assert (done.images, done.jobs, done.files_removed) == (1, 1, 1)
    assert shared.path not in stored_files()

    one = engine.images(other.id)[0]
    actions.delete(engine, [one.id])
    assert len(engine.images(other.id)) == 1  # the job stays while it has an image
    actions.delete(engine, [engine.images(other.id)[0].id])
    with engine.db.session() as session:
        assert session.scalars(select(Job)).all() == [] and session.scalars(select(Image)).all() == []
    assert stored_files() == []


def test_deleting_a_parent_keeps_the_child(engine, make):
    parent = make("parent", seed=1)
    child = engine.run(actions.regenerate(engine, actions.source(engine, parent.id)).id)
    actions.delete(engine, [parent.id])
    assert engine.get(child.id).parent_id is None and len(engine.images(child.id)) == 1


def _pretend_made_elsewhere(engine, job, change_pixels=None, change_recipe=None):
    """Rewrite a job's stored image as another machine might have made it; returns the new row's sha256."""
    from PIL import Image as PILImage

    from studio import store

    home = engine.settings.home
    with engine.db.session() as session:
        row = session.scalars(select(Image).where(Image.job_id == job.id)).one()
        path = store.resolve_inside(home, row.path)
        recipe = store.read_recipe(path)
        with PILImage.open(path) as img:
            pixels = img.convert("RGB")
        if change_pixels:
            change_pixels(pixels)
        if change_recipe:
            recipe = change_recipe(recipe)
        stored = store.save_image(home, pixels, recipe)
        row.sha256, row.path = stored.sha256, stored.path
        return stored.sha256


def test_verify_passes_an_image_whose_pixels_match_but_whose_recorded_scores_differ(run, engine, make):
    job = make("a red circle", seed=4)
    made_elsewhere = _pretend_made_elsewhere(  # e.g. a candidate's CLIP score, last digit, on another CPU
        engine, job, change_recipe=lambda r: {**r, "extra": {"candidates": [{"clip_score": 0.648209}]}})
    result = run("regen", job.id, "--verify", "--json")
    assert result.exit_code == 0, result.output
    image = json.loads(result.stdout)["images"][0]
    assert image["expected"] == made_elsewhere != image["actual"]
    assert image["match"] and not image["exact"] and image["comparison"]["same_pixels"]
    text = run("regen", job.id, "--verify")
    assert text.exit_code == 0 and "same pixels" in text.stdout
    assert "the image matches (pixels bit for bit; the file differs only in recorded" in text.stderr
    assert "only recorded diagnostics (extra) differ: extra: {'candidates': [{'clip_score': 0.648209}]} -> None" in text.stderr


def test_verify_names_the_size_of_a_pixel_difference(run, engine, make):
    job = make("a red circle", seed=5)

    def one_level_off(img):
        for x in range(3):
            r, g, b = img.getpixel((x, 0))
            img.putpixel((x, 0), (r + 1 if r < 255 else r - 1, g, b))

    _pretend_made_elsewhere(engine, job, change_pixels=one_level_off)
    result = run("regen", job.id, "--verify")
    assert result.exit_code == 1 and "1 of 1 images differ" in result.stderr
    assert "image 0: 3 of 64 pixels differ, by at most 1 level (likely floating-point arithmetic" in result.stderr
    report = json.loads(run("regen", job.id, "--verify", "--json").stdout)
    comparison = report["images"][0]["comparison"]
    assert not report["ok"] and (comparison["pixels_differing"], comparison["max_level"]) == (3, 1)

    other = make("a blue circle", seed=6)  # same pixels, but a field that makes the image: not a match
    _pretend_made_elsewhere(engine, other, change_recipe=lambda r: {**r, "prompt": "a blue circle, old"})
    result = run("regen", other.id, "--verify")
    assert result.exit_code == 1 and "same pixels; the recipes differ: prompt:" in result.stderr
