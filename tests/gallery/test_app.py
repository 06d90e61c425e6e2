"""The Textual browser driven by Textual's pilot: keys, paging, filters, details, actions."""

from __future__ import annotations

import asyncio
import io
import zipfile

import pytest
from rich.console import Console

pytest.importorskip("textual")

from textual.widgets import Input, Select  # noqa: E402

from studio.gallery.app import AskPath, Confirm, Details, GalleryApp, TileGrid  # noqa: E402
from studio.gallery.query import Filters, Gallery  # noqa: E402
from studio.records import short_id  # noqa: E402

SIZE = (120, 40)  # 6 columns x 3 rows of tiles at the default zoom


@pytest.fixture
def gallery_app(engine, make):
    for i in range(12):
        make(f"{'red' if i % 2 else 'blue'} thing {i}", count=2, seed=i * 10)
    make("broken thing", fail="error")

    def new(filters=None):
        return GalleryApp(engine, Gallery(engine.db, engine.settings.home), filters or Filters())

    return new


def plain(widget) -> str:
    """The text a Static widget shows, without colours."""
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


def drive(app, script):
    """Run ``script(pilot)`` against ``app`` headless and return what it returns."""

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            return await script(pilot)

    return asyncio.run(main())


def test_keys_move_and_page(gallery_app):
    app = gallery_app()

    async def script(pilot):
        grid = app.query_one(TileGrid)
        assert (grid.columns, grid.rows, len(grid.entries)) == (6, 3, 18)
        assert grid.entries[0].status == "failed" and app.total == 25
        await pilot.press("right", "right", "down")
        assert grid.selected == 8
        await pilot.press("left", "k")
        assert grid.selected == 1
        first_page = [e.key for e in grid.entries]
        await pilot.press("pagedown")
        assert len(grid.entries) == 7
        assert not app.page.has_after and not {e.key for e in grid.entries} & set(first_page)
        await pilot.press("pageup")
        assert [e.key for e in grid.entries] == first_page
        await pilot.press("end")
        assert [e.key for e in grid.entries][-1] == app.view.last_page(Filters(), 1).entries[0].key
        await pilot.press("home", "up")  # up from the first row of the first page: stays
        assert grid.selected == 0 and [e.key for e in grid.entries] == first_page
        for _ in range(3):
            await pilot.press("down")
        assert len(grid.entries) == 7  # moving past the bottom edge turned the page
        await pilot.press("home", "minus")
        assert grid.capacity > 18 and len(grid.entries) == 25  # smaller tiles: more per page
        assert "\u2580" in "".join(str(t) for t in app.thumbs._items.values())  # half-block pixels

    drive(app, script)


def test_search_and_filters(gallery_app):
    app = gallery_app()

    async def script(pilot):
        grid = app.query_one(TileGrid)
        await pilot.press("slash")
        assert isinstance(app.focused, Input) and app.focused.id == "search"
        await pilot.press(*"red", "enter")
        assert app.total == 12 and all("red" in e.prompt for e in grid.entries)
        assert app.focused is grid
        app.query_one("#status", Select).value = "failed"
        await pilot.pause()
        assert app.total == 0 and grid.entries == []
        await pilot.press("c")
        assert app.filters == Filters() and app.total == 25
        app.query_one("#status", Select).value = "failed"
        await pilot.pause()
        assert [e.prompt for e in grid.entries] == ["broken thing"]
        app.query_one("#dates", Input).focus()
        await pilot.press(*"2001-01-01..2001-12-31", "enter")
        assert app.total == 0
        app.query_one("#dates", Input).value = "junk"
        app.query_one("#dates", Input).focus()
        await pilot.press("enter")  # a bad date is a notification, not a crash
        assert app.total == 0

    drive(app, script)


def test_typing_searches_after_a_pause(gallery_app):
    app = gallery_app()

    async def script(pilot):
        await pilot.press("slash", *"blue")
        await pilot.pause(0.6)
        return app.total

    assert drive(app, script) == 12


def test_details_shows_recipe_and_lineage(gallery_app):
    app = gallery_app(Filters(text="thing 3"))

    async def script(pilot):
        await pilot.press("enter")
        assert isinstance(app.screen, Details)
        recipe = plain(app.screen.query_one("#recipe"))
        assert '"seed": 30' in recipe and '"prompt": "red thing 3"' in recipe and '"weights_sha256"' in recipe
        assert short_id(app.query_one(TileGrid).entries[0].job_id) in plain(app.screen.query_one("#lineage"))  # a prefix that resolves
        await pilot.press("right")
        assert "seed     31" in plain(app.screen.query_one("#fields"))
        await pilot.press("escape")
        assert not isinstance(app.screen, Details)

    drive(app, script)


def test_regenerate_vary_delete_and_export(gallery_app, engine, tmp_path):
    app = gallery_app(Filters(text="thing 5"))

    async def script(pilot):
        grid = app.query_one(TileGrid)
        source = grid.entries[0]
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.total == 3 and grid.entries[0].parent_id == source.job_id
        regenerated = grid.entries[0]
        assert regenerated.sha256 == source.sha256  # the same recipe made the same bytes
        await pilot.press("v")  # the selection is the newest tile: the regenerated one
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.total == 7 and {e.parent_id for e in grid.entries[:4]} == {regenerated.job_id}

        await pilot.press("e")
        assert isinstance(app.screen, AskPath)
        app.screen.query_one(Input).value = str(tmp_path / "one.zip")
        await pilot.press("enter")
        assert len(zipfile.ZipFile(tmp_path / "one.zip").namelist()) == 2

        await pilot.press("x")
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")
        assert app.total == 7
        victim = grid.entries[0]
        await pilot.press("x", "y")
        assert app.total == 6 and victim.key not in [e.key for e in grid.entries]

        await pilot.press("E")
        app.screen.query_one(Input).value = str(tmp_path / "all")
        await pilot.press("enter")
        assert len(list((tmp_path / "all").glob("*.png"))) == 6

    drive(app, script)
