"""Output that fits the terminal: one recipe per job, a jobs table with room for the prompt."""

from __future__ import annotations


def test_show_prints_the_recipe_once_for_a_job_of_four(run, engine, make):
    job = make("a red circle above a blue square", count=4, seed=7)
    out = run("show", job.id)
    assert out.exit_code == 0
    assert out.stdout.count('"core_version"') == 1 and out.stdout.count('"prompt"') == 1
    assert "the same for all 4 images but the seed" in out.stdout
    for image in engine.images(job.id):
        assert image.id in out.stdout and str(image.seed) in out.stdout


def test_jobs_at_80_columns_leaves_room_for_the_prompt(run, make, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    make("a large red circle above a small blue square", seed=1)
    out = run("jobs")
    lines = out.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert any("a large red circle" in line for line in lines), lines
