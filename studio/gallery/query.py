"""Read the gallery a page at a time, with filters and text search, never all of it at once.

A gallery entry is one image, or a job that has no image (queued, running, failed, canceled),
so that every filter, status included, shows something. Entries are ordered newest first by
(job id, image index). Job ids are ULIDs, which sort by creation time, so a page is found by
keyset pagination ("the next N after this key") on the primary key and on the (job_id, index)
unique index: page 1000 costs what page 1 costs, and rows added meanwhile never shift a page.
Date filters become ULID bounds on the same primary key for the same reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session
from ulid import ULID

from studio.db import Database, Image, Job, JobStatus
from studio.engine import locate as engine_locate
from studio.errors import UsageError
from studio.gallery import search

STATUSES = tuple(s.value for s in JobStatus)
MAX_PAGE = 1000


@dataclass(frozen=True)
class Filters:
    """What to show; every field optional. ``until`` is exclusive."""

    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise UsageError(f"unknown status {self.status!r}; one of {', '.join(STATUSES)}")

    @property
    def active(self) -> bool:
        return any((self.model, self.status, self.since, self.until, search.terms(self.text)))

    def describe(self) -> str:
        parts = []
        if search.terms(self.text):
            parts.append(f'"{self.text.strip()}"')
        if self.model:
            parts.append(f"model {self.model}")
        if self.status:
            parts.append(self.status)
        if self.since:
            parts.append(f"since {self.since:%Y-%m-%d %H:%M}")
        if self.until:
            parts.append(f"before {self.until:%Y-%m-%d %H:%M}")
        return ", ".join(parts) or "everything"


@dataclass(frozen=True, order=True)
class Key:
    """A position in the gallery: a job id and an image index (-1: a job without images)."""

    job_id: str
    index: int

    def __str__(self) -> str:
        return f"{self.job_id}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> "Key":
        job_id, sep, index = text.strip().rpartition(":")
        if not sep or not job_id or not re.fullmatch(r"-?\d+", index):
            raise UsageError(f"a gallery position looks like JOB_ID:INDEX, got {text!r}")
        return cls(job_id.upper(), int(index))


@dataclass(frozen=True)
class Entry:
    """One tile of the gallery: an image with its job's fields, or a job with no image."""

    job_id: str
    image_id: str | None
    index: int | None
    prompt: str
    model_id: str
    status: str
    seed: int
    params: dict[str, Any]
    created_at: datetime
    parent_id: str | None
    error: str | None
    sha256: str | None
    path: str | None
    width: int | None
    height: int | None

    @property
    def key(self) -> Key:
        return Key(self.job_id, -1 if self.index is None else self.index)

    @property
    def id(self) -> str:
        """What a user types to act on this tile: the image id, or the job id."""
        return self.image_id or self.job_id

    def as_dict(self, home: Path | None = None) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["key"] = str(self.key)
        if home is not None and self.path:
            data["file"] = str(home / self.path)
        return data


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    has_before: bool  # entries exist before the first one
    has_after: bool  # entries exist after the last one

    @property
    def first(self) -> Key | None:
        return self.entries[0].key if self.entries else None

    @property
    def last(self) -> Key | None:
        return self.entries[-1].key if self.entries else None


def ulid_floor(moment: datetime) -> str:
    """The smallest ULID of ``moment``'s millisecond: ids >= it were made at or after it."""
    if moment.tzinfo is None:
        moment = moment.astimezone()
    millis = max(0, int(moment.timestamp() * 1000))
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + bytes(10)))


def parse_date(text: str, *, end: bool = False) -> datetime:
    """``YYYY-MM-DD`` (local midnight; with ``end`` the next midnight), an ISO time, or ``Nd``/``Nh`` ago."""
    text = text.strip()
    ago = re.fullmatch(r"(\d+)\s*([dhm])", text)
    if ago:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[ago.group(2)]
        try:
            return datetime.now(timezone.utc) - timedelta(**{unit: int(ago.group(1))})
        except (OverflowError, ValueError):
            raise UsageError(f"not a date: {text!r} is further back than dates go") from None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
            return datetime.combine(day, time()).astimezone()
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise UsageError(f"not a date: {text!r} (use YYYY-MM-DD, an ISO time, or 7d / 12h ago)") from None
    return moment if moment.tzinfo else moment.astimezone()


def parse_date_range(text: str) -> tuple[datetime | None, datetime | None]:
    """``DAY`` (that day), ``DAY..`` (since), ``..DAY`` (until the end of), ``A..B``, or ``7d``."""
    text = (text or "").strip()
    if not text:
        return None, None
    if ".." not in text:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return parse_date(text), parse_date(text, end=True)
        return parse_date(text), None
    start, _, stop = text.partition("..")
    return (parse_date(start) if start.strip() else None, parse_date(stop, end=True) if stop.strip() else None)


class Gallery:
    """The read side of the gallery over one database; every call is one short transaction."""

    def __init__(self, db: Database, home: Path) -> None:
        self.db = db
        self.home = home

    # ---- pages ----------------------------------------------------------------------------

    def _base(self, filters: Filters) -> Select:
        query = select(Job, Image).outerjoin(Image, Image.job_id == Job.id)
        if filters.model:
            query = query.where(Job.model_id == filters.model)
        if filters.status:
            query = query.where(Job.status == filters.status)
        if filters.since:
            query = query.where(Job.id >= ulid_floor(filters.since))
        if filters.until:
            query = query.where(Job.id < ulid_floor(filters.until))
        match = search.prompt_matches(self.db.engine.dialect.name, Job.id, Job.prompt, filters.text)
        if match is not None:
            query = query.where(match)
        return query

    def page(
        self, filters: Filters, *, after: Key | None = None, before: Key | None = None, limit: int = 50
    ) -> Page:
        """Up to ``limit`` entries after ``after`` (or before ``before``; neither: the newest)."""
        if after is not None and before is not None:
            raise UsageError("give a position to page after or before, not both")
        limit = max(1, min(MAX_PAGE, limit))
        index = func.coalesce(Image.index, -1)
        query = self._base(filters)
        if before is None:
            if after is not None:
                query = query.where(Job.id <= after.job_id, or_(Job.id < after.job_id, index > after.index))
            query = query.order_by(Job.id.desc(), Image.index.asc())
        else:
            query = query.where(Job.id >= before.job_id, or_(Job.id > before.job_id, index < before.index))
            query = query.order_by(Job.id.asc(), Image.index.desc())
        with self.db.session() as session:
            rows = session.execute(query.limit(limit + 1)).all()
            entries = [_entry(job, image) for job, image in rows[:limit]]
        more = len(rows) > limit
        if before is not None:
            entries.reverse()
            return Page(entries, has_before=more, has_after=True)
        return Page(entries, has_before=after is not None, has_after=more)

    def last_page(self, filters: Filters, limit: int = 50) -> Page:
        """The oldest entries: the page a reader reaches by paging to the end."""
        sentinel = Key("0" * 26, 10**9)  # below every real key
        page = self.page(filters, before=sentinel, limit=limit)
        return replace(page, has_after=False)

    def iter_entries(self, filters: Filters, batch: int = 500) -> Iterator[Entry]:
        """Every matching entry, newest first, fetched ``batch`` at a time."""
        after = None
        while True:
            page = self.page(filters, after=after, limit=batch)
            yield from page.entries
            if not page.has_after:
                return
            after = page.last

    def count(self, filters: Filters) -> int:
        subquery = self._base(filters).with_only_columns(Job.id).subquery()
        with self.db.session() as session:
            return session.scalar(select(func.count()).select_from(subquery)) or 0

    def models(self) -> list[str]:
        with self.db.session() as session:
            return list(session.scalars(select(Job.model_id).distinct().order_by(Job.model_id)))

    # ---- single entries -------------------------------------------------------------------

    def entry(self, ident: str) -> Entry:
        """The entry an image id, a job id (its first image) or a unique prefix names."""
        with self.db.session() as session:
            job, image = locate(session, ident)
            if image is None and job.images:
                image = job.images[0]
            return _entry(job, image)

    def entries_of(self, ident: str) -> list[Entry]:
        """An image id: that image; a job id: every image of the job (or the job alone)."""
        with self.db.session() as session:
            job, image = locate(session, ident)
            images = [image] if image is not None else list(job.images) or [None]
            return [_entry(job, i) for i in images]


def _entry(job: Job, image: Image | None) -> Entry:
    return Entry(
        job_id=job.id,
        image_id=image.id if image else None,
        index=image.index if image else None,
        prompt=job.prompt,
        model_id=job.model_id,
        status=job.status,
        seed=image.seed if image else job.seed,
        params=dict(job.params or {}),
        created_at=job.created_at,
        parent_id=job.parent_id,
        error=job.error,
        sha256=image.sha256 if image else None,
        path=image.path if image else None,
        width=image.width if image else None,
        height=image.height if image else None,
    )


def locate(session: Session, ident: str) -> tuple[Job, Image | None]:
    """Resolve an image id or a job id, or a unique prefix of either; (job, image or None)."""
    return engine_locate(session, ident)


def filters_from(model=None, status=None, since=None, until=None, text="") -> Filters:
    """Filters from command-line strings (dates parsed as :func:`parse_date`)."""
    return Filters(
        model=model or None,
        status=status or None,
        since=parse_date(since) if since else None,
        until=parse_date(until, end=True) if until else None,
        text=text or "",
    )
