"""The query layer on SQLite and PostgreSQL: keyset pages, filters, prompt search, ids."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from studio.errors import NotFound, UsageError
from studio.gallery.query import Filters, Gallery, Key, parse_date_range, ulid_floor
from studio.gallery.search import fts5_query, terms, tsquery

from .conftest import maker


@pytest.fixture
def filled(any_engine):
    """Six jobs of two images each, one failed job and one queued job, newest last."""
    make = maker(any_engine)
    prompts = ["a red circle", "a blue square", "red and blue stripes", "a green tree", "a Red Circle again", "yellow sun"]
    for seed, prompt in enumerate(prompts):
        make(prompt, count=2, seed=seed * 10)
    failed = make("broken", fail="error")
    queued = any_engine.submit("waiting purple", "testgen")
    return any_engine, Gallery(any_engine.db, any_engine.settings.home), failed, queued


def walk(view, filters, limit):
    """Every entry by paging forward ``limit`` at a time."""
    keys, after = [], None
    while True:
        page = view.page(filters, after=after, limit=limit)
        keys += [e.key for e in page.entries]
        if not page.has_after:
            return keys
        after = page.last


def test_pages_cover_everything_once_newest_first(filled):
    _engine, view, failed, queued = filled
    everything = view.page(Filters(), limit=100)
    assert len(everything.entries) == 14 and not everything.has_after and not everything.has_before
    keys = [e.key for e in everything.entries]
    assert keys[0] == Key(queued.id, -1) and keys[1] == Key(failed.id, -1)
    assert [k.index for k in keys[2:4]] == [0, 1]  # images of a job in index order
    for limit in (1, 3, 5, 13):
        assert walk(view, Filters(), limit) == keys
    back = view.page(Filters(), before=keys[7], limit=3)
    assert [e.key for e in back.entries] == keys[4:7] and back.has_before
    last = view.last_page(Filters(), limit=4)
    assert [e.key for e in last.entries] == keys[-4:] and not last.has_after
    assert view.count(Filters()) == 14


def test_filters_by_status_model_and_date(filled):
    _engine, view, failed, queued = filled
    failed_only = view.page(Filters(status="failed")).entries
    assert [(e.job_id, e.image_id, e.error) for e in failed_only] == [(failed.id, None, "testgen was asked to fail")]
    assert [e.job_id for e in view.page(Filters(status="queued")).entries] == [queued.id]
    assert view.count(Filters(model="testgen")) == 14 and view.count(Filters(model="other")) == 0
    now = datetime.now(timezone.utc)
    assert view.count(Filters(since=now - timedelta(hours=1))) == 14
    assert view.count(Filters(since=now + timedelta(seconds=5))) == 0
    assert view.count(Filters(until=now - timedelta(hours=1))) == 0
    assert view.models() == ["testgen"]
    with pytest.raises(UsageError, match="unknown status"):
        Filters(status="nope")


def test_prompt_search_prefixes_all_words_and_odd_input(filled):
    _engine, view, _failed, _queued = filled

    def prompts(text, **kw):
        return sorted({e.prompt for e in view.page(Filters(text=text, **kw), limit=100).entries})

    assert prompts("red") == ["a Red Circle again", "a red circle", "red and blue stripes"]
    assert prompts("circ") == ["a Red Circle again", "a red circle"]
    assert prompts("RED blue") == ["red and blue stripes"]
    assert prompts("red", status="failed") == []
    assert prompts("purp") == ["waiting purple"]
    assert prompts("nothing-like-this") == []
    for hostile in ['"', "'; drop table jobs; --", "red*", "NEAR(", "a:* & !", "(", "\\"]:
        view.page(Filters(text=hostile))  # never a syntax error
    assert prompts("  ") == prompts("")  # no words: no text filter
    assert view.count(Filters(text="red")) == 6


def test_search_follows_deletes(filled):
    engine, view, _failed, _queued = filled
    from studio.gallery import actions

    victim = view.page(Filters(text="yellow")).entries[0]
    actions.delete(engine, [victim.job_id])
    assert view.page(Filters(text="yellow")).entries == []
    make = maker(engine)
    make("yellow again")
    assert [e.prompt for e in view.page(Filters(text="yellow")).entries] == ["yellow again"]


def test_locate_by_id_prefix_and_errors(filled):
    _engine, view, failed, _queued = filled
    image = view.page(Filters(text="green")).entries[0]
    assert view.entry(image.image_id).image_id == image.image_id
    assert view.entry(image.image_id.lower()).image_id == image.image_id  # any case
    assert view.entry(image.job_id).image_id == image.image_id  # a job names its first image
    assert [e.index for e in view.entries_of(image.job_id)] == [0, 1]
    assert view.entry(failed.id).image_id is None
    with pytest.raises(NotFound):
        view.entry("01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    with pytest.raises(UsageError, match="ambiguous"):
        view.entry(image.job_id[:4])


def test_keys_dates_and_search_terms():
    assert Key.parse("01ABC:3") == Key("01ABC", 3) and str(Key("01ABC", -1)) == "01ABC:-1"
    with pytest.raises(UsageError):
        Key.parse("nonsense")
    since, until = parse_date_range("2026-01-02")
    assert until - since == timedelta(days=1)
    assert parse_date_range("2026-01-02..")[1] is None and parse_date_range("..2026-01-02")[0] is None
    assert parse_date_range("7d")[0] < datetime.now(timezone.utc)
    with pytest.raises(UsageError, match="not a date"):
        parse_date_range("yesterday-ish")
    assert ulid_floor(datetime(2026, 1, 1, tzinfo=timezone.utc)) < ulid_floor(datetime(2026, 1, 1, 0, 0, 1, tzinfo=timezone.utc))
    assert terms('Red "circle"* a_b') == ["red", "circle", "a", "b"]
    assert fts5_query(["red", "ci"]) == '"red"* AND "ci"*' and tsquery(["red", "ci"]) == "red:* & ci:*"
