"""Export and import: round trips through a folder and a zip, and every kind of bad input."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from dataclasses import replace

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from studio.db import Image, Job
from studio.engine import Engine
from studio.gallery import actions, transfer
from studio.gallery.query import Filters, Gallery
from studio.store import StoreError, encode_png


@pytest.fixture
def family(run, engine, make):
    """A job of two images, a regenerated child and an unrelated failed job."""
    root = make("a red circle", count=2, seed=4)
    child = engine.run(actions.regenerate(engine, actions.source(engine, root.id), params={"size": 10}).id)
    make("broken", fail="error")
    return root, child


@pytest.fixture
def elsewhere(settings, tmp_path):
    """A second, empty gallery to import into."""
    other = Engine(replace(settings, home=tmp_path / "other", database_url=f"sqlite:///{tmp_path / 'other' / 'o.db'}"))
    yield other
    other.db.dispose()


def snapshot(engine):
    """Everything stored: rows (ids, shas, recipes, parents) and files."""
    with engine.db.session() as session:
        jobs = sorted((j.id, j.prompt, j.seed, j.count, j.parent_id, j.status) for j in session.scalars(select(Job)))
        images = sorted((i.id, i.job_id, i.index, i.sha256, i.seed, json.dumps(i.recipe, sort_keys=True)) for i in session.scalars(select(Image)))
    folder = engine.settings.home / "images"
    files = sorted(p.name for p in folder.rglob("*.png")) if folder.exists() else []
    return jobs, images, files


@pytest.mark.parametrize("target", ["out", "out.zip"])
def test_round_trip_keeps_ids_bytes_recipes_and_lineage(run, engine, family, elsewhere, tmp_path, target):
    root, child = family
    result = run("export", "--all", "--to", tmp_path / target, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 4  # the failed job has nothing to export
    done = transfer.import_paths(elsewhere, [tmp_path / target])
    assert (done.images, done.jobs, done.duplicates) == (4, 2, 0)
    jobs, images, files = snapshot(elsewhere)
    _, original_images, original_files = snapshot(engine)
    assert images == original_images and files == original_files
    assert [(j[0], j[4]) for j in jobs] == [(root.id, None), (child.id, root.id)]
    for image in elsewhere.images(root.id):
        assert (elsewhere.settings.home / image.path).read_bytes() == (engine.settings.home / image.path).read_bytes()
    again = transfer.import_paths(elsewhere, [tmp_path / target])
    assert (again.images, again.duplicates) == (0, 4)
    assert snapshot(elsewhere)[:2] == (jobs, images)


def test_export_selection_by_ids_and_query(run, engine, family, tmp_path):
    root, child = family
    assert run("export", root.id, "--to", tmp_path / "a").exit_code == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["format"] == "studio-export" and [i["file"] for i in manifest["images"]] == [f"{root.id}-0.png", f"{root.id}-1.png"]
    assert manifest["images"][0]["recipe"]["seed"] == 4 and manifest["images"][0]["parent_job_id"] is None
    assert run("export", "--query", "circle", "--to", tmp_path / "b.zip").exit_code == 0
    assert len(zipfile.ZipFile(tmp_path / "b.zip").namelist()) == 5  # 4 images and the manifest
    assert "nothing selected" in run("export", "--to", tmp_path / "c").stderr
    assert "nothing to export" in run("export", "--query", "zebra", "--to", tmp_path / "c").stderr
    assert "already exists" in run("export", "--all", "--to", tmp_path / "b.zip").stderr
    assert "not both" in run("export", root.id, "--all", "--to", tmp_path / "d").stderr


def test_import_loose_pngs_and_an_unknown_model(run, engine, family, elsewhere, tmp_path):
    root, _child = family
    image = engine.images(root.id)[1]
    loose = tmp_path / "loose.png"
    loose.write_bytes((engine.settings.home / image.path).read_bytes())
    recipe = {"prompt": "from elsewhere", "model": "not-installed", "seed": 3, "params": {"x": 1}}
    (tmp_path / "foreign.png").write_bytes(encode_png(PILImage.new("RGB", (4, 4), (1, 2, 3)), recipe))
    done = transfer.import_paths(elsewhere, [loose, tmp_path / "foreign.png"])
    assert (done.images, done.jobs) == (2, 2)
    entries = Gallery(elsewhere.db, elsewhere.settings.home).page(Filters()).entries
    assert sorted((e.prompt, e.model_id, e.seed, e.index, e.status) for e in entries) == [
        ("a red circle", "testgen", 5, 0, "succeeded"),
        ("from elsewhere", "not-installed", 3, 0, "succeeded"),
    ]
    assert run("import", loose).stdout.strip() == "imported 0 images in 0 jobs; 1 already in the gallery"


def png_bytes(recipe=None):
    image = PILImage.new("RGB", (4, 4), (9, 9, 9))
    if recipe is not None:
        return encode_png(image, recipe)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = {"prompt": "ok", "model": "testgen", "seed": 1, "params": {}}


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            if isinstance(data, zipfile.ZipInfo):
                archive.writestr(data, name)
            else:
                archive.writestr(name, data)
    return path


def symlink_entry(name, target):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return (target, info)


BAD_ZIPS = {
    "dotdot": ([("../../evil.png", png_bytes(GOOD))], "escapes the folder"),
    "nested-dotdot": ([("a/../../evil.png", png_bytes(GOOD))], "escapes the folder"),
    "absolute": ([("/tmp/evil.png", png_bytes(GOOD))], "is an absolute path"),
    "drive": ([("C:\\evil.png", png_bytes(GOOD))], "is an absolute path"),
    "backslash-dotdot": ([("..\\evil.png", png_bytes(GOOD))], "escapes the folder"),
    "symlink": ([symlink_entry("link.png", "/etc/passwd")], "is a symbolic link"),
    "no-recipe": ([("plain.png", png_bytes())], "no Studio recipe"),
    "corrupt": ([("bad.png", png_bytes(GOOD)[:60])], "not a readable PNG"),
    "not-png": ([("x.png", b"GIF89a not a png")], "not a PNG file"),
    "bad-recipe": ([("r.png", png_bytes({"prompt": "x", "model": "testgen"}))], "no valid seed"),
    "manifest-escape": ([("manifest.json", json.dumps({"format": "studio-export", "images": [{"file": "../x.png"}]}))], "escapes the folder"),
    "manifest-missing-file": ([("manifest.json", json.dumps({"format": "studio-export", "images": [{"file": "gone.png"}]}))], "not in the archive"),
    "manifest-garbage": ([("manifest.json", "{nope")], "not valid JSON"),
    "manifest-sha": ([("a.png", png_bytes(GOOD)), ("manifest.json", json.dumps({"format": "studio-export", "images": [{"file": "a.png", "sha256": "0" * 64}]}))], "sha256 differs"),
}


@pytest.mark.parametrize("case", sorted(BAD_ZIPS))
def test_bad_zip_is_refused_and_nothing_changes(run, engine, family, tmp_path, case):
    entries, message = BAD_ZIPS[case]
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes({**GOOD, "prompt": "would be new"}))
    archive = make_zip(tmp_path / "in.zip", [("fine.png", png_bytes({**GOOD, "seed": 77})), *entries])
    before = snapshot(engine)
    result = run("import", good, archive)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert snapshot(engine) == before
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_bad_folders_and_files_are_refused(run, engine, family, tmp_path):
    before = snapshot(engine)
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(GOOD))

    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(outside, linked / "a.png")
    escaping = tmp_path / "escaping"
    escaping.mkdir()
    (escaping / "manifest.json").write_text(json.dumps({"format": "studio-export", "images": [{"file": "../outside.png"}]}))
    (tmp_path / "plain.png").write_bytes(png_bytes())
    (tmp_path / "text.png").write_text("hello")
    cases = [
        (linked, "is a symbolic link"),
        (escaping, "escapes the folder"),
        (tmp_path / "plain.png", "no Studio recipe"),
        (tmp_path / "text.png", "not a PNG file"),
        (tmp_path / "missing.png", "no such file"),
    ]
    for path, message in cases:
        result = run("import", path)
        assert result.exit_code == 1 and message in result.stderr, (path, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(engine) == before


def test_a_failing_insert_removes_only_the_files_it_added(engine, family, tmp_path, monkeypatch):
    root, _child = family
    existing = engine.images(root.id)[0]
    before = snapshot(engine)
    new = tmp_path / "new.png"
    new.write_bytes(png_bytes({**GOOD, "prompt": "brand new"}))
    again = tmp_path / "again.png"
    again.write_bytes((engine.settings.home / existing.path).read_bytes())

    def boom(*_args, **_kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(transfer, "_add_rows", boom)
    with pytest.raises(RuntimeError):
        transfer.import_paths(engine, [new, again])
    assert snapshot(engine) == before


def test_member_names():
    from studio.gallery.sources import safe_member

    assert safe_member("./a/b.png", "x") == "a/b.png"
    for name in ["", "../a", "/a", "a/../../b", "C:/a", "a\x00b"]:
        with pytest.raises(StoreError):
            safe_member(name, "x")
