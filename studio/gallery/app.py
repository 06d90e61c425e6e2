"""The interactive gallery browser (Textual). The only module of Studio that imports Textual.

One screen: a filter bar (prompt search, model, status, dates), a grid of half-block
thumbnails sized to the terminal, and a status line. The grid holds exactly one page: the
page size follows the window, and pages come from the keyset-paginated query layer, so a
gallery of a million images opens as fast as one of ten. Enter opens a detail screen with
the full recipe and the lineage. Actions (regenerate, variations, export, delete) go
through :mod:`studio.gallery.actions` and :mod:`studio.gallery.transfer`; jobs run in a
worker thread so the browser stays responsive, and the first page refreshes when they end.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from rich import box
from rich.cells import cell_len, set_cell_size
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, Label, Select, Static

from studio.engine import Engine, JobInfo
from studio.errors import StudioError
from studio import store
from studio.gallery import actions, lineage, transfer
from studio.gallery.query import STATUSES, Entry, Filters, Gallery, Key, Page, parse_date_range
from studio.gallery.thumbs import Cells, ThumbnailCache, placeholder
from studio.plumbing import visible
from studio.records import short_id, status_style
from studio.store import StoreError

ZOOM = [(10, 5), (16, 8), (24, 12), (32, 16)]  # thumbnail size in cells (width, height)
DEFAULT_ZOOM = 1
SEARCH_DELAY_S = 0.3


BORDERS = {  # selected: (corners and edges, style)
    True: ("┏━┓┃┗┛", "bold yellow"),
    False: ("╭─╮│╰╯", "grey35"),
}
GAP = Segment(" ")


def caption(entry: Entry, width: int) -> list[Segment]:
    """One line under a thumbnail: the prompt, after a coloured dot unless it succeeded."""
    segments, room = [], width
    if entry.status != "succeeded":
        segments.append(Segment("● ", Style.parse(status_style(entry.status))))
        room -= 2
    prompt = visible(" ".join(entry.prompt.split()))
    if cell_len(prompt) > room:
        prompt = set_cell_size(prompt, room - 1) + "…"
    segments.append(Segment(set_cell_size(prompt, room)))
    return segments


class TileGrid(Widget, can_focus=True):
    """One page of tiles; arrow keys move, moving past an edge asks for the next page."""

    BINDINGS = [
        Binding("left,h", "move(-1, 0)", "left", show=False),
        Binding("right,l", "move(1, 0)", "right", show=False),
        Binding("up,k", "move(0, -1)", "up", show=False),
        Binding("down,j", "move(0, 1)", "down", show=False),
        Binding("pagedown,n", "app.next_page", "next page"),
        Binding("pageup,p", "app.previous_page", "prev page"),
        Binding("home,g", "app.first_page", "first", show=False),
        Binding("end,G", "app.last_page", "last", show=False),
        Binding("enter", "app.details", "details"),
        Binding("r", "app.regenerate", "regen"),
        Binding("v", "app.vary", "vary"),
        Binding("e", "app.export_selected", "export"),
        Binding("E", "app.export_all", "export all", show=False),
        Binding("x,delete", "app.delete", "delete"),
        Binding("plus,equals_sign", "zoom(1)", "bigger", show=False),
        Binding("minus", "zoom(-1)", "smaller", show=False),
    ]

    class Edge(Message):
        """The selection tried to leave the page: direction +1 (forward) or -1 (back)."""

        def __init__(self, direction: int) -> None:
            super().__init__()
            self.direction = direction

    class Resized(Message):
        """The number of tiles that fit changed; the page must be fetched again."""

    class Activated(Message):
        """A tile was double-clicked."""

    def __init__(self, thumbs: ThumbnailCache, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thumbs = thumbs
        self.entries: list[Entry] = []
        self.selected = 0
        self.zoom = DEFAULT_ZOOM
        self.columns, self.rows = 1, 1
        self._tiles: dict[tuple, list[list[Segment]]] = {}

    @property
    def thumb_size(self) -> tuple[int, int]:
        return ZOOM[self.zoom]

    @property
    def tile_size(self) -> tuple[int, int]:
        """Cells per tile, spacing included: border 2 + gap 1 across; border 2 + caption 1 down."""
        cols, rows = self.thumb_size
        return cols + 3, rows + 3

    @property
    def capacity(self) -> int:
        return self.columns * self.rows

    @property
    def current(self) -> Entry | None:
        return self.entries[self.selected] if self.entries else None

    def show(self, entries: list[Entry], selected: int = 0) -> None:
        self.entries = entries
        self._tiles.clear()
        self.selected = max(0, min(selected, len(entries) - 1))
        self.refresh()

    def fit(self) -> bool:
        """Recompute the grid from the widget size; True when the capacity changed."""
        tile_w, tile_h = self.tile_size
        before = self.capacity
        self.columns = max(1, (self.size.width + 1) // tile_w)
        self.rows = max(1, self.size.height // tile_h)
        return self.capacity != before

    def on_resize(self, _event: events.Resize) -> None:
        if self.fit():
            self.post_message(self.Resized())
        self.refresh()

    def action_move(self, dx: int, dy: int) -> None:
        if not self.entries:
            return
        target = self.selected + dx + dy * self.columns
        if target < 0:
            self.post_message(self.Edge(-1))
        elif target >= len(self.entries):
            if dy and self.selected // self.columns < (len(self.entries) - 1) // self.columns:
                target = len(self.entries) - 1  # a short last row: go to its last tile
                self.selected = target
                self.refresh()
            else:
                self.post_message(self.Edge(1))
        else:
            self.selected = target
            self.refresh()

    def action_zoom(self, step: int) -> None:
        zoom = max(0, min(len(ZOOM) - 1, self.zoom + step))
        if zoom != self.zoom:
            self.zoom = zoom
            if self.fit():
                self.post_message(self.Resized())
            self.refresh()

    def index_at(self, x: int, y: int) -> int | None:
        tile_w, tile_h = self.tile_size
        col, row = x // tile_w, y // tile_h
        if col >= self.columns:
            return None
        index = row * self.columns + col
        return index if index < len(self.entries) else None

    def on_click(self, event: events.Click) -> None:
        index = self.index_at(event.x, event.y)
        if index is None:
            return
        self.selected = index
        self.refresh()
        if event.chain >= 2:
            self.post_message(self.Activated())

    def tile(self, entry: Entry, selected: bool) -> list[list[Segment]]:
        """The lines of one tile: a border, the thumbnail, the caption. Cached per page."""
        key = (entry.key, entry.path, entry.status, selected, self.zoom)
        lines = self._tiles.get(key)
        if lines is not None:
            return lines
        cols, rows = self.thumb_size
        if entry.path:
            picture = self.thumbs.get(entry.path, cols, rows)
        else:
            picture = placeholder(entry.status, cols, rows, status_style(entry.status))
        (tl, edge, tr, side, bl, br), style = BORDERS[selected]
        border = Style.parse(style)
        wall = Segment(side, border)
        lines = [[Segment(tl + edge * cols + tr, border)]]
        lines += [[wall, *line, wall] for line in picture.lines]
        lines.append([wall, *caption(entry, cols), wall])
        lines.append([Segment(bl + edge * cols + br, border)])
        self._tiles[key] = lines
        return lines

    def render(self) -> RenderableType:
        if not self.entries:
            return Text("nothing here: no images match these filters", style="grey50", justify="center")
        lines = []
        for start in range(0, len(self.entries), self.columns):
            row = self.entries[start : start + self.columns]
            tiles = [self.tile(e, start + i == self.selected) for i, e in enumerate(row)]
            for y in range(len(tiles[0])):
                line = []
                for tile in tiles:
                    line += tile[y]
                    line.append(GAP)
                lines.append(line)
        return Cells(lines, self.columns * self.tile_size[0])


# ---- screens ------------------------------------------------------------------------------


class Confirm(ModalScreen[bool]):
    """A yes/no question; y or enter says yes, n or escape says no."""

    BINDINGS = [Binding("y,enter", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(visible(self.question), markup=False)
            yield Label("[b]y[/] yes   [b]n[/] no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class AskPath(ModalScreen[str | None]):
    """Ask for a file or folder; enter accepts, escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, question: str, default: str) -> None:
        super().__init__()
        self.question = question
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(visible(self.question), markup=False)
            yield Input(value=self.default, id="path")
            yield Label("a name ending in .zip writes a zip file, anything else a folder", classes="hint")

    @on(Input.Submitted)
    def accept(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Details(Screen):
    """One entry: a large thumbnail, its fields, the full recipe and the lineage."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back"),
        Binding("left,h", "step(-1)", "previous"),
        Binding("right,l", "step(1)", "next"),
        Binding("r", "app.regenerate", "regen"),
        Binding("v", "app.vary", "vary"),
        Binding("e", "app.export_selected", "export"),
        Binding("x,delete", "app.delete", "delete"),
    ]

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(id="picture")
            with VerticalScroll(id="info"):
                yield Static(id="fields")
                yield Static(id="recipe")
                yield Static(id="lineage")
        yield Footer()

    def on_mount(self) -> None:
        self.update_view()

    def action_step(self, direction: int) -> None:
        grid = self.app.query_one(TileGrid)
        target = grid.selected + direction
        if 0 <= target < len(grid.entries):
            grid.selected = target
            grid.refresh()
            self.update_view()

    def update_view(self) -> None:
        app: GalleryApp = self.app  # type: ignore[assignment]
        entry = app.selected
        if entry is None:
            self.app.pop_screen()
            return
        width = max(16, min(64, self.size.width // 2 - 2))
        height = max(8, min(32, self.size.height - 2))
        if entry.path:
            picture = app.thumbs.get(entry.path, width, height)
        else:
            picture = placeholder(entry.status, width, height, status_style(entry.status))
        self.query_one("#picture", Static).update(picture)
        state = store.file_state(app.view.home, entry.path, entry.sha256) if entry.path else None
        self.query_one("#fields", Static).update(fields_table(entry, app.view.home, state))
        recipe = app.recipe_of(entry)
        self.query_one("#recipe", Static).update(
            Panel(recipe_renderable(recipe), title="recipe", title_align="left", box=box.ROUNDED)
        )
        self.query_one("#lineage", Static).update(
            Panel(lineage_renderable(app, entry), title="lineage", title_align="left", box=box.ROUNDED)
        )


def shown(value) -> str:
    """Stored text for rich markup: literal, control characters visible (as the CLI's ``shown``)."""
    return escape(visible(value))


def recipe_renderable(recipe: dict) -> Text:
    """A recipe as indented JSON, its text shown literally (no raw control characters)."""
    from rich.highlighter import JSONHighlighter

    lines = json.dumps(recipe, indent=2, sort_keys=True, ensure_ascii=False, default=str).splitlines()
    text = JSONHighlighter()(Text("\n".join(visible(line) for line in lines)))
    text.no_wrap, text.overflow = True, None  # as rich's JSON: one line per field
    return text


def fields_table(entry: Entry, home: Path, state: str | None = None) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("image", shown(entry.image_id or "(none)")),
        ("job", shown(entry.job_id) + (f"  image {entry.index}" if entry.index is not None else "")),
        ("prompt", shown(entry.prompt)),
        ("model", shown(entry.model_id)),
        ("status", f"[{status_style(entry.status)}]{shown(entry.status)}[/]"),
        ("seed", str(entry.seed)),
        ("created", f"{entry.created_at:%Y-%m-%d %H:%M:%S}"),
    ]
    if entry.width:
        rows.append(("size", f"{entry.width}x{entry.height}"))
    if entry.sha256:
        rows.append(("sha256", shown(entry.sha256)))
        rows.append(("file", shown(home / entry.path)))
        if state not in (None, "ok"):
            rows.append(("file check", f"[red]{state}[/]: `studio check --repair` remakes it"))
    if entry.parent_id:
        rows.append(("parent", shown(entry.parent_id)))
    if entry.error:
        rows.append(("error", f"[red]{shown(entry.error)}[/]"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def lineage_renderable(app: "GalleryApp", entry: Entry) -> RenderableType:
    family = lineage.lineage(app.view.db, entry.job_id, lineage.unset_values_of(app.engine.registry))

    def label(node: lineage.Node, parent: lineage.Node | None) -> str:
        changes = node.changes_from(parent)
        text = f"{shown(short_id(node.job_id))} [{status_style(node.status)}]{shown(node.status)}[/] seed {node.seed} x{node.count}"
        if changes:
            text += f" [dim]({shown(', '.join(changes))})[/]"
        return f"[reverse]{text}[/]" if node.job_id == family.focus else text

    tree = lineage.rich_tree(family, label)
    if family.size == 1:
        return Group(tree, Text("no parent, no children yet", style="grey50"))
    return tree


# ---- the app ------------------------------------------------------------------------------


class GalleryApp(App):
    """Browse one gallery with the given starting filters."""

    TITLE = "Studio gallery"
    CSS = """
    #filters { height: 3; }
    #search { width: 2fr; }
    #model, #status { width: 1fr; }
    #dates { width: 1fr; }
    TileGrid { height: 1fr; padding: 0 1; }
    #statusline { height: 1; padding: 0 1; background: $boost; }
    Details Horizontal { height: 1fr; }
    Details #picture { width: auto; padding: 0 1; }
    Details #info { width: 1fr; }
    Confirm, AskPath { align: center middle; }
    #dialog { width: 70; height: auto; padding: 1 2; border: thick $accent; background: $surface; }
    #dialog .hint { color: $text-muted; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("slash", "focus_search", "search"),
        Binding("escape", "focus_grid", "grid", show=False),
        Binding("c", "clear_filters", "clear filters", show=False),
    ]

    def __init__(self, engine: Engine, view: Gallery, filters: Filters | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.view = view
        self.filters = filters or Filters()
        self.thumbs = ThumbnailCache(view.home)
        self.page = Page([], False, False)
        self.anchor: tuple[str, Key] | None = None  # how the page on screen was fetched
        self.total = 0
        self._search_timer = None

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Every notification shows its text literally: ids, prompts and errors are data, not markup."""
        super().notify(visible(message), title=visible(title), severity=severity, timeout=timeout, markup=False)

    # ---- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        names = list(self.view.models())
        if self.filters.model and self.filters.model not in names:
            names.append(self.filters.model)
        models = [(Text(visible(m)), m) for m in names]  # a model name is data, never markup
        with Horizontal(id="filters"):
            yield Input(value=self.filters.text, placeholder="search prompts  (/)", id="search")
            yield Select(models, prompt="any model", id="model", value=self.filters.model or Select.NULL)
            yield Select([(s, s) for s in STATUSES], prompt="any status", id="status", value=self.filters.status or Select.NULL)
            yield Input(placeholder="date: 2026-11-24, 7d, A..B", id="dates")
        yield TileGrid(self.thumbs, id="grid")
        yield Static(id="statusline")
        yield Footer()

    def on_mount(self) -> None:
        self.reload_count()
        self.grid.focus()
        self.call_after_refresh(self.first_load)

    def first_load(self) -> None:
        self.grid.fit()
        self.load()

    # ---- data -------------------------------------------------------------------------------

    @property
    def grid(self) -> TileGrid:
        return self.query_one(TileGrid)

    @property
    def selected(self) -> Entry | None:
        return self.grid.current

    def load(self, anchor: tuple[str, Key] | None = None, selected: int = 0) -> None:
        """Fetch the page ``anchor`` names (None: the newest) and show it."""
        limit = self.grid.capacity
        if anchor is None:
            page = self.view.page(self.filters, limit=limit)
        elif anchor[0] == "after":
            page = self.view.page(self.filters, after=anchor[1], limit=limit)
        elif anchor[0] == "last":
            page = self.view.last_page(self.filters, limit=limit)
        else:
            page = self.view.page(self.filters, before=anchor[1], limit=limit)
        if not page.entries and anchor is not None and anchor[0] != "last":
            return self.load(None, selected)  # the page emptied (deleted); go to the start
        self.page, self.anchor = page, anchor
        self.grid.show(page.entries, selected)
        self.update_status()

    def reload(self) -> None:
        self.load(self.anchor, self.grid.selected)

    def reload_count(self) -> None:
        self.total = self.view.count(self.filters)

    def update_status(self) -> None:
        shown = len(self.page.entries)
        where = "first page" if not self.page.has_before else ("last page" if not self.page.has_after else "")
        parts = [f"{self.total:,} entr{'y' if self.total == 1 else 'ies'}", f"{shown} shown"]
        if where:
            parts.append(where)
        parts.append(self.filters.describe())
        current = self.selected
        if current is not None:
            parts.append(current.id)
        self.query_one("#statusline", Static).update(Text(visible("  ·  ".join(parts)), no_wrap=True, overflow="ellipsis"))

    def recipe_of(self, entry: Entry) -> dict:
        if entry.image_id is None:
            return {"prompt": entry.prompt, "model": entry.model_id, "seed": entry.seed, "params": entry.params}
        return actions.source(self.engine, entry.image_id).recipe

    def apply_filters(self, **changes) -> None:
        try:
            self.filters = Filters(**{**self.filters.__dict__, **changes})
        except StudioError as exc:
            self.notify(str(exc), severity="error")
            return
        self.reload_count()
        self.load()

    # ---- messages ---------------------------------------------------------------------------

    def on_tile_grid_edge(self, message: TileGrid.Edge) -> None:
        if message.direction > 0:
            self.action_next_page()
        else:
            self.action_previous_page(select_last=True)

    def on_tile_grid_resized(self, _message: TileGrid.Resized) -> None:
        if self.is_mounted:
            self.reload()

    def on_tile_grid_activated(self, _message: TileGrid.Activated) -> None:
        self.action_details()

    @on(Input.Changed, "#search")
    def search_changed(self, event: Input.Changed) -> None:
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DELAY_S, lambda: self.search_now(event.value))

    @on(Input.Submitted, "#search")
    def search_submitted(self, event: Input.Submitted) -> None:
        if self._search_timer is not None:
            self._search_timer.stop()
        self.search_now(event.value)
        self.grid.focus()

    def search_now(self, value: str) -> None:
        if value != self.filters.text:
            self.apply_filters(text=value)

    @on(Select.Changed, "#model")
    def model_changed(self, event: Select.Changed) -> None:
        value = None if event.value is Select.NULL else event.value
        if value != self.filters.model:
            self.apply_filters(model=value)

    @on(Select.Changed, "#status")
    def status_changed(self, event: Select.Changed) -> None:
        value = None if event.value is Select.NULL else event.value
        if value != self.filters.status:
            self.apply_filters(status=value)

    @on(Input.Submitted, "#dates")
    def dates_submitted(self, event: Input.Submitted) -> None:
        try:
            since, until = parse_date_range(event.value)
        except StudioError as exc:
            self.notify(str(exc), severity="error")
            return
        self.apply_filters(since=since, until=until)
        self.grid.focus()

    # ---- navigation -------------------------------------------------------------------------

    def action_focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_focus_grid(self) -> None:
        self.grid.focus()

    def action_clear_filters(self) -> None:
        self.filters = Filters()
        self.query_one("#search", Input).value = ""
        self.query_one("#dates", Input).value = ""
        self.query_one("#model", Select).clear()
        self.query_one("#status", Select).clear()
        self.reload_count()
        self.load()

    def action_next_page(self) -> None:
        if self.page.has_after and self.page.last is not None:
            self.load(("after", self.page.last))
        else:
            self.bell()

    def action_previous_page(self, select_last: bool = False) -> None:
        if self.page.has_before and self.page.first is not None:
            self.load(("before", self.page.first), selected=self.grid.capacity - 1 if select_last else 0)
            if not self.page.has_before:
                self.anchor = None  # reached the start: later reloads show new entries too
        else:
            self.bell()

    def action_first_page(self) -> None:
        self.load(None)

    def action_last_page(self) -> None:
        self.load(("last", Key("", 0)), selected=self.grid.capacity - 1)

    def action_details(self) -> None:
        if self.selected is not None:
            self.push_screen(Details())

    def on_key(self, _event: events.Key) -> None:
        self.call_after_refresh(self.update_status)

    # ---- actions ----------------------------------------------------------------------------

    def action_regenerate(self) -> None:
        entry = self.selected
        if entry is not None:
            self.submit(lambda: actions.regenerate(self.engine, actions.source(self.engine, entry.id)), "regenerating")

    def action_vary(self) -> None:
        entry = self.selected
        if entry is not None:
            self.submit(lambda: actions.vary(self.engine, actions.source(self.engine, entry.id), 4), "4 variations of")

    def submit(self, make_job, what: str) -> None:
        try:
            job = make_job()
        except StudioError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"{what} {job.parent_id}: job {job.id}")
        self.run_job(job)

    @work(thread=True, group="jobs")
    def run_job(self, job: JobInfo) -> None:
        finished = actions.dispatch(self.engine, job)
        self.call_from_thread(self.job_done, finished)

    def job_done(self, job: JobInfo) -> None:
        if job.status == "succeeded":
            self.notify(f"job {job.id} succeeded")
        elif job.status in ("queued", "running"):
            self.notify(f"job {job.id} queued for the workers")
        else:
            self.notify(f"job {job.id} {job.status}: {job.error or ''}", severity="error")
        self.reload_count()
        if self.anchor is None:  # new entries appear on the first page
            self.reload()

    def action_export_selected(self) -> None:
        entry = self.selected
        if entry is not None:
            default = f"studio-{short_id(entry.id).lower()}.zip"
            self.push_screen(AskPath(f"Export {entry.id} to", default), lambda target: self.export(target, [entry]))

    def action_export_all(self) -> None:
        default = f"studio-export-{datetime.now():%Y%m%d-%H%M%S}.zip"
        self.push_screen(
            AskPath(f"Export {self.total:,} entries ({self.filters.describe()}) to", default),
            lambda target: self.export(target, None),
        )

    def export(self, target: str | None, entries: list[Entry] | None) -> None:
        if not target:
            return
        try:
            if entries is not None:
                entries = [e for entry in entries for e in self.view.entries_of(entry.id)]
            done = transfer.export(self.engine, entries if entries is not None else self.view.iter_entries(self.filters), Path(target))
        except (StudioError, StoreError, OSError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"exported {done.images} image{'s' if done.images != 1 else ''} to {done.target}")

    def action_delete(self) -> None:
        entry = self.selected
        if entry is None:
            return
        what = f"image {entry.image_id}" if entry.image_id else f"job {entry.job_id} ({entry.status})"
        self.push_screen(Confirm(f"Delete {what}?\nIts file goes too unless another image uses it."),
                         lambda yes: self.delete(entry) if yes else None)

    def delete(self, entry: Entry) -> None:
        try:
            done = actions.delete(self.engine, [entry.id])
        except StudioError as exc:
            self.notify(str(exc), severity="error")
            return
        if isinstance(self.screen, Details):
            self.pop_screen()
        self.notify(f"deleted {done.images} image{'s' if done.images != 1 else ''}, {done.files_removed} file{'s' if done.files_removed != 1 else ''}")
        self.reload_count()
        self.reload()


def run_gallery(engine: Engine, view: Gallery, filters: Filters) -> None:
    GalleryApp(engine, view, filters).run()
