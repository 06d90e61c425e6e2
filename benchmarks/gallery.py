"""Gallery responsiveness with 10k and 100k images, on SQLite and PostgreSQL.

For each database and size: open (connect, schema check, count, models, as the browser does
on start), the first page drawn (query + half-block thumbnails + the tile grid rendered off
screen), a page deep in the gallery (keyset pagination should make it cost what the first
costs), a prompt search (first page and its count), and the Textual browser from start to
its first page, headless. Rows are generated (4 images per job, a pool of real PNG files),
not made by a model: the subject is the query layer and the drawing, not generation.
Usage: python benchmarks/gallery.py [--quick]   (--quick: 10k images only)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import report

from studio.plumbing import one_line

WORDS = "red green blue yellow purple orange circle square triangle star large small above below left right beside a the".split()
IMAGES_PER_JOB = 4
PAGE = 24  # 6 x 4 tiles: an ordinary terminal
REPEAT = 5
LEGEND = {
    "open cold": "first open in this process: connect, schema check, count, models, first page query",
    "open": "the same, again (median)",
    "draw page": "first page query + decoding its thumbnails (fresh cache) + the tile grid rendered off screen",
    "deep page": "the page after a key half way down the gallery (keyset pagination)",
    "search": "first page of a two-word prefix search matching many prompts ('red circ')",
    "search count": "the count of that search",
    "rare search": "first page of a four-word search matching few prompts",
    "browser": "Textual browser, headless 120x40: from creation to its first page of tiles",
}
POSTGRES_ADMIN_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_files(home: Path, count: int = 64) -> list:
    from PIL import Image

    from studio import store

    rng = random.Random(1)
    files = []
    for i in range(count):
        image = Image.new("RGB", (64, 64), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        files.append(store.save_image(home, image, {"prompt": f"pool {i}", "model": "bench", "seed": i, "params": {}}))
    return files


def fill(db, files: list, images: int) -> float:
    """Insert ``images`` images (in jobs of 4) spread over the last 30 days; returns seconds."""
    from sqlalchemy import insert
    from ulid import ULID

    from studio.db import Image, Job

    rng = random.Random(7)
    start = time.perf_counter()
    now = datetime.now(timezone.utc)
    jobs_total = images // IMAGES_PER_JOB
    batch_jobs = 2500
    for first in range(0, jobs_total, batch_jobs):
        jobs, rows = [], []
        for j in range(first, min(jobs_total, first + batch_jobs)):
            made = now - timedelta(seconds=(jobs_total - j) * 30 * 86400 / jobs_total)
            job_id = str(ULID.from_timestamp(made.timestamp()))
            failed = rng.random() < 0.02
            jobs.append(dict(
                id=job_id, prompt=" ".join(rng.choices(WORDS, k=6)), model_id=rng.choice(["galip", "clip-gen"]),
                params={"steps": 20}, seed=j * 4, count=IMAGES_PER_JOB, status="failed" if failed else "succeeded",
                priority=0, attempts=1, error="boom" if failed else None, progress_done=1, progress_total=1,
                cancel_requested=False, worker_id=None, parent_id=None, created_at=made, started_at=made,
                finished_at=made, updated_at=made,
            ))
            if failed:
                continue
            for k in range(IMAGES_PER_JOB):
                file = files[(j * 4 + k) % len(files)]
                rows.append(dict(
                    id=str(ULID.from_timestamp(made.timestamp())), job_id=job_id, index=k, seed=j * 4 + k,
                    sha256=file.sha256, path=file.path, width=64, height=64,
                    recipe={"prompt": "x", "model": "galip", "seed": j * 4 + k}, created_at=made,
                ))
        with db.session() as session:
            session.execute(insert(Job), jobs)
            if rows:
                session.execute(insert(Image), rows)
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    return time.perf_counter() - start


def timed(fn, repeat: int = REPEAT) -> tuple[float, float]:
    """(first, median of the rest) in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times[0], statistics.median(times[1:] or times)


def draw_first_page(view, filters, home):
    """The work of the browser's first frame, minus Textual: query, thumbnails, tile grid."""
    from rich.console import Console

    from studio.gallery.app import TileGrid
    from studio.gallery.thumbs import ThumbnailCache

    grid = TileGrid(ThumbnailCache(home))  # a fresh cache: every thumbnail is decoded
    grid.columns, grid.rows = 6, 4
    grid.entries = view.page(filters, limit=PAGE).entries
    Console(file=io.StringIO(), width=120, color_system="truecolor").print(grid.render())


def app_first_page(engine, view) -> float:
    """Milliseconds from creating the Textual browser to its first page of tiles, headless."""
    from studio.gallery.app import GalleryApp

    async def main() -> float:
        start = time.perf_counter()
        app = GalleryApp(engine, view)
        async with app.run_test(size=(120, 40)) as pilot:
            while not app.page.entries:
                await pilot.pause(0.005)
            return (time.perf_counter() - start) * 1000

    return asyncio.run(main())


def measure(backend: str, url: str, images: int, home: Path, files: list, fills: dict) -> list:
    from dataclasses import replace

    from studio.config import load_settings
    from studio.db.session import open_database
    from studio.engine import Engine
    from studio.gallery.query import Filters, Gallery, Key

    db = open_database(url)
    fill_s = fill(db, files, images)
    db.dispose()

    def open_gallery():
        database = open_database(url)
        view = Gallery(database, home)
        view.count(Filters())
        view.models()
        view.page(Filters(), limit=PAGE)
        database.dispose()

    open_first, open_ms = timed(open_gallery)
    db = open_database(url)
    view = Gallery(db, home)
    everything = Filters()
    _first, draw_ms = timed(lambda: draw_first_page(view, everything, home))
    deep_key = Key(_nth_job(db, images // IMAGES_PER_JOB // 2), 3)  # half way down the gallery
    _first, deep_ms = timed(lambda: view.page(everything, after=deep_key, limit=PAGE))
    search = Filters(text="red circ")
    _first, search_ms = timed(lambda: view.page(search, limit=PAGE))
    _first, search_count_ms = timed(lambda: view.count(search))
    rare = Filters(text="purple triangle beside star")
    _first, rare_ms = timed(lambda: view.page(rare, limit=PAGE))
    settings = replace(load_settings({"STUDIO_HOME": str(home), "STUDIO_LOAD_PLUGINS": ""}), database_url=url)
    app_ms = app_first_page(Engine(settings, db=db), view)
    fills[f"{backend} {images // 1000}k"] = {"seconds": round(fill_s, 1), "entries": view.count(everything)}
    db.dispose()
    return [backend, f"{images // 1000}k", round(open_first, 1), round(open_ms, 1), round(draw_ms, 1), round(deep_ms, 2),
            round(search_ms, 2), round(search_count_ms, 1), round(rare_ms, 2), round(app_ms)]


def _nth_job(db, n: int) -> str:
    from sqlalchemy import select

    from studio.db import Job

    with db.session() as session:
        return session.scalar(select(Job.id).order_by(Job.id.desc()).offset(n).limit(1))


def postgres_database():
    """A throw-away PostgreSQL database URL and a function that drops it; (None, reason) if none."""
    from sqlalchemy import create_engine

    name = f"studio_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure (no driver, no server): nothing to measure
        return None, one_line(exc)

    def drop():
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


def run(sizes: list[int], home: Path) -> tuple[list, list, dict]:
    files = make_files(home)
    rows, notes, fills = [], [], {}
    for images in sizes:
        rows.append(measure("sqlite", f"sqlite:///{home / f'g{images}.db'}", images, home, files, fills))
        url, drop = postgres_database()
        if url is None:
            notes.append(f"postgresql skipped: {drop}")
            continue
        try:
            rows.append(measure("postgresql", url, images, home, files, fills))
        finally:
            drop()
    return rows, notes, fills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000]
    with tempfile.TemporaryDirectory(prefix="studio-bench-gallery-") as folder:
        rows, notes, fills = run(sizes, Path(folder))
    columns = ["db", "images", "open cold", "open", "draw page", "deep page", "search", "search count",
               "rare search", "browser"]
    ratios = {}
    for backend in ("sqlite", "postgresql"):
        small = next((r for r in rows if r[0] == backend and r[1] == "10k"), None)
        large = next((r for r in rows if r[0] == backend and r[1] == "100k"), None)
        if small and large:
            ratios[backend] = {c: round(large[i] / small[i], 2) for i, c in enumerate(columns) if i >= 2 and small[i]}
    title = f"Gallery, {' and '.join(f'{s // 1000}k' for s in sizes)} images: ms, page of {PAGE}, median of {REPEAT - 1}"
    report("gallery", title, columns, rows, {"ratios_100k_over_10k": ratios, "fill": fills, "notes": notes, "legend": LEGEND})
    for note in notes:
        print(note)
    for backend, ratio in ratios.items():
        print(f"{backend}: 100k / 10k = {ratio}")


if __name__ == "__main__":
    main()
