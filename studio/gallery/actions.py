"""What the gallery does to images: regenerate, vary, verify, delete.

New jobs go through the Engine's public API (``submit`` with ``parent_id``, ``run``), so a
regeneration is an ordinary job with the usual state machine, linked to where it came from.
Only delete writes rows directly: the engine has no notion of removing history.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlalchemy import delete as sql_delete
from sqlalchemy import exists, select

from studio import store
from studio.engine import Engine, ImageInfo, JobInfo
from studio.errors import StoreError, StudioError, UsageError
from studio.executors import dispatch
from studio.gallery.compare import Comparison, compare_files
from studio.gallery.query import locate

SEED_SPACE = 2**32


@dataclass(frozen=True)
class Source:
    """What to make again: a whole job, or one image of it."""

    job: JobInfo
    image: ImageInfo | None

    @property
    def recipe(self) -> dict[str, Any]:
        """The image's stored recipe; for a job, the fields its images' recipes start from."""
        if self.image is not None:
            return self.image.recipe
        return {"prompt": self.job.prompt, "model": self.job.model_id, "seed": self.job.seed, "params": self.job.params}

    @property
    def prompt(self) -> str:
        return self.recipe.get("prompt") or self.job.prompt

    @property
    def model_id(self) -> str:
        return self.recipe.get("model") or self.job.model_id

    @property
    def seed(self) -> int:
        return self.image.seed if self.image is not None else self.job.seed

    @property
    def count(self) -> int:
        return 1 if self.image is not None else self.job.count

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.recipe.get("params") or self.job.params or {})

    @property
    def label(self) -> str:
        return f"image {self.image.id}" if self.image is not None else f"job {self.job.id}"


def source(engine: Engine, ident: str) -> Source:
    """The job or image an id (or unique prefix) names."""
    with engine.db.session() as session:
        job, image = locate(session, ident)
        return Source(JobInfo.from_row(job), ImageInfo.from_row(image) if image is not None else None)


def recipe_params(engine: Engine, src: Source, replaced: Iterable[str] = ()) -> dict[str, Any]:
    """The source's parameters, as a recipe may give them: an ``image`` parameter must name a
    stored input (``inputs/<sha256>.png``) that is here. A recipe (an imported PNG's, say) that
    names any other path is refused: no recipe makes Studio open a file outside its inputs store.
    A parameter the model gained after the recipe was made takes its ``unset_means`` value.
    """
    from studio.inputs import is_reference, resolve_input
    from studio.plugins import UnknownModel

    params = dict(src.params)
    try:
        spec = engine.registry.model(src.model_id)
    except UnknownModel:
        return params  # submit says so, with the known models
    for p in spec.params:
        if p.name not in params and p.unset_means is not None:  # added since: the value it was made with
            params[p.name] = p.unset_means
        value = params.get(p.name)
        if p.type != "image" or value in (None, "") or p.name in replaced:
            continue
        if not isinstance(value, str) or not is_reference(value):
            raise UsageError(
                f"the recipe of {src.label} gives parameter {p.name!r} as {value!r}, not a stored input "
                f"(inputs/<sha256>.png); a recipe never names a file to open; pass the picture again with -p {p.name}=FILE"
            )
        try:
            resolve_input(engine.settings, value)
        except StudioError as exc:
            raise StudioError(f"{src.label}: {exc}") from None
    return params


def regenerate(engine: Engine, src: Source, *, seed: int | None = None, params: dict[str, Any] | None = None) -> JobInfo:
    """Submit the source's recipe again (optionally with another seed or parameters) as its child."""
    merged = {**recipe_params(engine, src, replaced=tuple(params or ())), **(params or {})}
    return engine.submit(
        src.prompt, src.model_id, seed=src.seed if seed is None else seed, count=src.count, params=merged,
        parent_id=src.job.id,
    )


def vary(engine: Engine, src: Source, count: int = 4, *, seed: int | None = None) -> JobInfo:
    """``count`` variations: the same recipe with other seeds, as one child job.

    The new seeds are consecutive from a random start (or ``seed``), so the variations are
    themselves reproducible and a later ``regen`` of one of them is exact.
    """
    if seed is None:
        seed = random.randrange(0, SEED_SPACE)
        if seed <= src.seed < seed + count:
            seed = (src.seed + count) % SEED_SPACE  # never repeat the source's own seed
    return engine.submit(src.prompt, src.model_id, seed=seed, count=count, params=recipe_params(engine, src),
                         parent_id=src.job.id)


# ---- verify ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCheck:
    """One image of a verification: its recipe's sha256 against the new one, and its stored file.

    ``file_before``: the stored file as found (``ok``, ``damaged``, ``missing``); ``file_after``:
    as left (a damaged or missing file is rewritten from the regenerated bytes when they hash
    to its name, so it ends ``ok``).
    """

    index: int
    seed: int
    expected: str
    actual: str | None
    #: the new file's sha256 in every PNG format Studio wrote (``store.format_digests``): an image
    #: made before the interop chunks matches its re-run in the format it was written in
    equivalent: frozenset[str] = frozenset()
    file_before: str = store.OK
    file_after: str = store.OK
    #: where the hashes differ and both files are readable: how the pixels and recipes differ
    comparison: Comparison | None = None

    @property
    def match(self) -> bool:
        """The same file, or the same pixels with only recorded diagnostics (``extra``) differing.

        Those diagnostics (e.g. a candidate's CLIP score in its sixth decimal) can come out
        differently on another CPU although the image kept is the same, pixel for pixel.
        """
        if self.actual is None:
            return False
        if self.expected == self.actual or self.expected in self.equivalent:
            return True
        return self.comparison is not None and self.comparison.same_image

    @property
    def exact(self) -> bool:
        """The same bytes (in the PNG layout the original was written in)."""
        return self.actual is not None and (self.expected == self.actual or self.expected in self.equivalent)

    @property
    def repaired(self) -> bool:
        return self.file_before != store.OK and self.file_after == store.OK


@dataclass
class Verification:
    source: Source
    job: JobInfo
    device: str
    checks: list[ImageCheck]
    differences: list[str] = field(default_factory=list)  # recipe fields that changed: likely causes

    @property
    def ok(self) -> bool:
        return (self.job.status == "succeeded" and bool(self.checks)
                and all(c.match and c.file_after == store.OK for c in self.checks))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source.image.id if self.source.image else self.source.job.id,
            "job": self.job.as_dict(),
            "device": self.device,
            "images": [{"index": c.index, "seed": c.seed, "expected": c.expected, "actual": c.actual, "match": c.match,
                        "exact": c.exact, "file_before": c.file_before, "file_after": c.file_after,
                        "repaired": c.repaired, "comparison": c.comparison.as_dict() if c.comparison else None}
                       for c in self.checks],
            "differences": self.differences,
        }


RECIPE_FIELDS_THAT_MATTER = ("weights_sha256", "device", "dtype", "plugin_version", "core_version")


def _expected_images(engine: Engine, src: Source) -> list[ImageInfo]:
    images = [src.image] if src.image is not None else engine.images(src.job.id)
    if not images:
        raise StudioError(f"{src.label} has no images to compare with (status {src.job.status})")
    return images


def check_reproducible(engine: Engine, src: Source, device: str, on_status=None) -> None:
    """Refuse, with the reason, a verification that cannot match: other weights or dtype.

    Loads the model (the run needs it anyway) and compares its ``describe()`` with the recipe;
    ``on_status`` hears ``loading model weights`` when that load is the slow first one.
    """
    from studio.plugins import UnknownModel

    recipe = _expected_images(engine, src)[0].recipe
    try:
        spec = engine.registry.model(src.model_id)
    except UnknownModel as exc:
        raise UsageError(str(exc)) from None
    if on_status is not None and (spec.id, device) not in engine.cache.loaded():
        on_status("loading model weights")
    now = engine.cache.get(spec, device).describe()
    was, current = recipe.get("weights_sha256"), now.get("weights_sha256")
    if was and current and was != current:
        raise StudioError(
            f"the weights of model {spec.id!r} changed since {src.label} was made "
            f"(then {was[:12]}, now {current[:12]}): an exact match is impossible; "
            f"put the weights it was made with back in place as {spec.id!r} (e.g. the plugin version that "
            f"shipped them), or run `studio regen` without --verify"
        )
    was_dtype, dtype = recipe.get("dtype"), now.get("dtype", "float32")
    if was_dtype and was_dtype != dtype:
        raise StudioError(f"{src.label} was made with dtype {was_dtype}; model {spec.id!r} now runs in {dtype}")


def verify_device(engine: Engine, src: Source) -> str:
    """The device the source was made on, which an exact re-run must use."""
    images = _expected_images(engine, src)
    device = images[0].recipe.get("device") or engine.settings.resolve_device()
    if str(device).startswith("cuda") and engine.settings.resolve_device() == "cpu":
        raise StudioError(f"{src.label} was made on {device}; this machine has no CUDA device, so it cannot match")
    return device


def verify(engine: Engine, src: Source, on_progress=None, on_status=None) -> Verification:
    """Make the source again with everything identical, here, and compare each image: by
    sha256, and where that differs by pixels and recipe (:mod:`studio.gallery.compare`).

    It runs in this process even when a broker is configured: only here can the device be
    the one in the recipe. ``on_progress``/``on_status`` are the run's hooks (see
    :meth:`studio.runner.Runner.run`); ``on_status`` also hears ``comparing``.
    """
    expected = _expected_images(engine, src)
    device = verify_device(engine, src)
    check_reproducible(engine, src, device, on_status)
    home = engine.settings.home
    before = [store.file_state(home, original.path, original.sha256) for original in expected]
    job = regenerate(engine, src)
    hooks = {k: v for k, v in (("on_progress", on_progress), ("on_status", on_status)) if v is not None}
    job = engine.run(job.id, device=device, **hooks)  # storing the new images repairs a damaged file with the same name
    if on_status is not None:
        on_status("comparing")
    made = {i.index: i for i in engine.images(job.id)} if job.status == "succeeded" else {}
    checks, differences = [], []
    for offset, original in enumerate(expected):
        new = made.get(offset)
        equivalent = frozenset()
        after = store.file_state(home, original.path, original.sha256)
        if new is not None and new.sha256 != original.sha256:
            equivalent = frozenset(store.format_digests(store.resolve_inside(engine.settings.home, new.path).read_bytes()))
        comparison = None
        if new is not None and original.sha256 not in equivalent and new.sha256 != original.sha256 and after == store.OK:
            try:
                comparison = compare_files(store.resolve_inside(home, original.path),
                                           store.resolve_inside(home, new.path))
            except (StoreError, OSError):
                comparison = None  # an unreadable original says "differs" without the detail
        check = ImageCheck(original.index, original.seed, original.sha256, new.sha256 if new else None,
                           equivalent=equivalent, file_before=before[offset], file_after=after,
                           comparison=comparison)
        checks.append(check)
        if new is not None and not check.match:
            for key in RECIPE_FIELDS_THAT_MATTER:
                if original.recipe.get(key) != new.recipe.get(key):
                    note = f"{key}: {original.recipe.get(key)} -> {new.recipe.get(key)}"
                    if note not in differences:
                        differences.append(note)
    return Verification(src, job, device, checks, differences)


# ---- delete ------------------------------------------------------------------------------


@dataclass
class Deleted:
    images: int = 0
    jobs: int = 0
    files_removed: int = 0
    files_kept: int = 0  # still used by another image row

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def delete(engine: Engine, idents: Iterable[str]) -> Deleted:
    """Remove images (an image id) or whole jobs (a job id), then the files no row needs.

    An image's job goes too once it has no image left. Rows go in one transaction; a file is
    removed only after that commit, and only when no remaining row has the same sha256, so a
    file shared by two jobs (same pixels, same recipe) stays until the last row goes.
    """
    from studio.db import Image, Job

    result = Deleted()
    with engine.db.session() as session:
        image_ids, job_ids, touched = set(), set(), set()
        for ident in idents:
            job, image = locate(session, ident)
            if image is None:
                job_ids.add(job.id)
                image_ids.update(i.id for i in job.images)
            else:
                image_ids.add(image.id)
                touched.add(job.id)
        rows = session.execute(select(Image.sha256, Image.path).where(Image.id.in_(image_ids))).all() if image_ids else []
        paths = dict(rows)
        if image_ids:
            session.execute(sql_delete(Image).where(Image.id.in_(image_ids)))
        emptied = {
            job_id for job_id in touched - job_ids
            if not session.scalar(select(exists().where(Image.job_id == job_id)))
        }
        job_ids |= emptied
        if job_ids:
            session.execute(sql_delete(Job).where(Job.id.in_(job_ids)))
        result.images, result.jobs = len(rows), len(job_ids)
        still_used = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(paths)).distinct())) if paths else set()
    home = engine.settings.home
    for sha, path in paths.items():
        if sha in still_used:
            result.files_kept += 1
            continue
        try:
            store.resolve_inside(home, path).unlink()
            result.files_removed += 1
        except FileNotFoundError:
            pass
    return result
