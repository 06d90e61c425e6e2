"""Every bad input ends in one line on stderr and an exit code, and changes nothing stored.

One table, run against one shared studio home (made once, with the fast test generator):
each case runs the CLI in-process and checks the exit code (2: bad input, 1: a failure at run
time), exactly one line on stderr, no exception escaping the command, and that every job row,
image row and stored file that existed before is still there, unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sqlite3
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from studio.cli import add_plugin_commands, cli
from studio.config import load_settings
from studio.engine import Engine

pytestmark = pytest.mark.usefixtures("testgen_installed")

PLUGINS = "testgen"


# ---- the shared store and the files the cases use --------------------------------------------


class Ctx:
    """What the cases refer to: the shared home, its job and image ids, and a folder of bad files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.files = root / "files"
        self.files.mkdir(parents=True)
        self.job = self.image = self.queued = ""

    def f(self, name: str) -> str:
        return str(self.files / name)


def png_bytes(recipe: dict | str | None = None, size: tuple[int, int] = (4, 4), chunk: str = "studio") -> bytes:
    info = PngImagePlugin.PngInfo()
    if recipe is not None:
        info.add_text(chunk, recipe if isinstance(recipe, str) else json.dumps(recipe), zip=True)
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A PNG header announcing width x height pixels, with a recipe and a tiny (broken) IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    recipe = json.dumps({"prompt": "big", "model": "testgen", "seed": 1, "params": {}}).encode()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"tEXt", b"studio\x00" + recipe) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def good_recipe(**changes) -> dict:
    recipe = {"prompt": "imported", "model": "testgen", "seed": 3, "params": {"size": 4}}
    recipe.update(changes)
    return recipe


def make_zip(path: Path, entries: dict[str, bytes], links: tuple[str, ...] = ()) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def make_files(ctx: Ctx) -> None:
    import torch

    d = ctx.files
    (d / "a-file").write_text("not a folder")
    (d / "text.png").write_text("hello")
    (d / "norecipe.png").write_bytes(png_bytes(None))
    (d / "badjson.png").write_bytes(png_bytes("{not json"))
    (d / "list.png").write_bytes(png_bytes("[1, 2]"))
    (d / "noprompt.png").write_bytes(png_bytes({"model": "testgen", "seed": 1}))
    (d / "emptyprompt.png").write_bytes(png_bytes(good_recipe(prompt="   ")))
    (d / "bigprompt.png").write_bytes(png_bytes(good_recipe(prompt="x" * 900_000)))
    (d / "longprompt.png").write_bytes(png_bytes(good_recipe(prompt="x" * 2001)))
    (d / "surrogate.png").write_bytes(png_bytes('{"prompt": "a \\udcff b", "model": "testgen", "seed": 1}'))
    (d / "nul.png").write_bytes(png_bytes('{"prompt": "a \\u0000 b", "model": "testgen", "seed": 1}'))
    (d / "nomodel.png").write_bytes(png_bytes(good_recipe(model="")))
    (d / "modelnum.png").write_bytes(png_bytes(good_recipe(model=7)))
    (d / "negseed.png").write_bytes(png_bytes(good_recipe(seed=-1)))
    (d / "floatseed.png").write_bytes(png_bytes(good_recipe(seed=1.5)))
    (d / "hugeseed.png").write_bytes(png_bytes(good_recipe(seed=2**64)))
    (d / "paramslist.png").write_bytes(png_bytes(good_recipe(params=[1])))
    (d / "paramrange.png").write_bytes(png_bytes(good_recipe(params={"size": 99999})))
    (d / "paramunknown.png").write_bytes(png_bytes(good_recipe(params={"bogus": 1})))
    (d / "paramtype.png").write_bytes(png_bytes(good_recipe(params={"size": "big"})))
    (d / "imagepath.png").write_bytes(png_bytes(good_recipe(model="clip-gen", params={"image": "/etc/passwd"})))
    (d / "imagedots.png").write_bytes(png_bytes(good_recipe(model="clip-gen", params={"image": "inputs/../../x.png"})))
    (d / "bomb.png").write_bytes(huge_png(12000, 12000))
    (d / "wide.png").write_bytes(huge_png(100_000, 1))
    (d / "truncated.png").write_bytes(png_bytes(good_recipe())[:-30])
    good = png_bytes(good_recipe())
    make_zip(d / "traversal.zip", {"../evil.png": good})
    make_zip(d / "absolute.zip", {"/tmp/evil.png": good})
    make_zip(d / "symlink.zip", {"ok.png": good}, links=("link.png",))
    make_zip(d / "badmanifest.zip", {"manifest.json": b"{not json", "a.png": good})
    make_zip(d / "manifestfmt.zip", {"manifest.json": b'{"format": "other"}', "a.png": good})
    make_zip(d / "manifestmissing.zip", {"manifest.json": json.dumps(
        {"format": "studio-export", "images": [{"file": "missing.png"}]}).encode()})
    make_zip(d / "manifestsha.zip", {"manifest.json": json.dumps(
        {"format": "studio-export", "images": [{"file": "a.png", "sha256": "0" * 64}]}).encode(), "a.png": good})
    make_zip(d / "manifesttraversal.zip", {"manifest.json": json.dumps(
        {"format": "studio-export", "images": [{"file": "../a.png"}]}).encode(), "a.png": good})
    make_zip(d / "zipnorecipe.zip", {"a.png": png_bytes(None)})
    (d / "corrupt.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    whole = (d / "traversal.zip").read_bytes()
    (d / "truncated.zip").write_bytes(whole[: len(whole) // 2])
    (d / "linkdir").mkdir()
    (d / "linkdir" / "a.png").symlink_to(d / "norecipe.png")
    (d / "fifo.png").parent.mkdir(exist_ok=True)
    os.mkfifo(d / "fifo.png")
    # model files
    torch.save({"model": {"netG": {"w": torch.tensor([1.0, float("nan")])}}}, d / "nan.pth")
    torch.save({"model": {"netG": {"w": torch.tensor([1.0, float("inf")])}}}, d / "inf.pth")
    torch.save({"model": {"netG": {"bogus.weight": torch.zeros(2)}}}, d / "wrongkeys.pth")
    torch.save({"something": 1}, d / "notgalip.pth")
    (d / "payload.pth").write_bytes(pickle.dumps({"model": Payload(f"touch {d / 'PWNED'}")}, protocol=2))
    (d / "yaml.pth").write_text(f"!!python/object/apply:os.system ['touch {d / 'PWNED'}']\n")
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, str(d / "torchscript.pth"))
    (d / "empty.pth").write_bytes(b"")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """One home with finished jobs (one of two images), a queued job, and a folder of bad files."""
    ctx = Ctx(tmp_path_factory.mktemp("bad-input"))
    env = {"STUDIO_HOME": str(ctx.home), "STUDIO_LOAD_PLUGINS": PLUGINS}
    engine = Engine(load_settings(env))
    first = engine.run(engine.submit("a red circle", "testgen", seed=1, count=2, params={"size": 8}).id)
    engine.run(engine.submit("a [bold]blue[/] square", "testgen", seed=5, params={"size": 8}).id)
    ctx.job, ctx.image = first.id, engine.images(first.id)[0].id
    ctx.queued = engine.submit("waiting", "testgen", seed=9, params={"size": 8}).id
    engine.db.dispose()
    make_files(ctx)
    # the GALIP importer is a plugin command: add it to the in-process CLI (as `studio` does at start)
    saved = os.environ.get("STUDIO_LOAD_PLUGINS")
    os.environ["STUDIO_LOAD_PLUGINS"] = "testgen,galip"
    try:
        add_plugin_commands(cli)
    finally:
        os.environ.pop("STUDIO_LOAD_PLUGINS") if saved is None else os.environ.__setitem__("STUDIO_LOAD_PLUGINS", saved)
    return ctx


def snapshot(home: Path) -> tuple[dict, dict, dict]:
    """Every job row, image row and stored file (by sha256 of its bytes) of ``home``."""
    with sqlite3.connect(home / "studio.db") as conn:
        conn.row_factory = sqlite3.Row
        jobs = {row["id"]: dict(row) for row in conn.execute("SELECT * FROM jobs")}
        images = {row["id"]: dict(row) for row in conn.execute("SELECT * FROM images")}
    files = {}
    for folder in ("images", "inputs"):
        for path in sorted((home / folder).rglob("*")) if (home / folder).exists() else []:
            if path.is_file():
                files[str(path.relative_to(home))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return jobs, images, files


def kept(before: dict, after: dict) -> list[str]:
    """Keys whose values changed or went missing (new keys are allowed: a failed job is recorded)."""
    return [key for key, value in before.items() if after.get(key) != value]


# ---- the table ----------------------------------------------------------------------------
# (name, exit code, args as a function of ctx, env overrides as a function of ctx or None)

S = ["submit"]
T = ["-m", "testgen"]


def case(name, code, args, env=None, skip=None):
    return pytest.param(code, args, env, id=name, marks=[pytest.mark.skipif(skip[0], reason=skip[1])] if skip else [])


def _zero_db(ctx):
    home = ctx.root / "zero"
    home.mkdir(exist_ok=True)
    (home / "studio.db").write_bytes(b"")
    return {"STUDIO_HOME": str(home)}


def _garbage_db(ctx):
    home = ctx.root / "garbage"
    home.mkdir(exist_ok=True)
    (home / "studio.db").write_bytes(b"this is not a database file at all" * 100)
    return {"STUDIO_HOME": str(home)}


def _dir_db(ctx):
    home = ctx.root / "dirdb"
    (home / "studio.db").mkdir(parents=True, exist_ok=True)
    return {"STUDIO_HOME": str(home)}


def _newer_db(ctx):
    home = ctx.root / "newer"
    if not (home / "studio.db").exists():
        home.mkdir(exist_ok=True)
        (home / "studio.db").write_bytes((ctx.home / "studio.db").read_bytes())
        with sqlite3.connect(home / "studio.db") as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
    return {"STUDIO_HOME": str(home)}


def _config(text):
    def env(ctx):
        home = ctx.root / f"config-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        home.mkdir(exist_ok=True)
        (home / "config.json").write_text(text)
        return {"STUDIO_HOME": str(home)}

    return env


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


CASES = [
    # ---- submit: the prompt
    case("empty-prompt", 2, lambda c: S + ["", *T]),
    case("blank-prompt", 2, lambda c: S + ["   \t ", *T]),
    case("long-prompt", 2, lambda c: S + ["x" * 2001, *T]),
    case("huge-prompt", 2, lambda c: S + ["x" * 900_000, *T]),
    case("nul-in-prompt", 2, lambda c: S + ["a\x00b", *T]),
    case("undecodable-prompt", 2, lambda c: S + ["a red \udcff circle", *T]),
    case("lone-surrogate-prompt", 2, lambda c: S + ["\ud800", *T]),
    # ---- submit: model, seed, count, params, priority, --out
    case("unknown-model", 2, lambda c: S + ["x", "-m", "nope"]),
    case("markup-model", 2, lambda c: S + ["x", "-m", "[/x]"]),
    case("escape-model", 2, lambda c: S + ["x", "-m", "\x1b]0;title\x07"]),
    case("empty-model", 2, lambda c: S + ["x", "-m", ""]),
    case("default-model-unknown", 2, lambda c: S + ["x"], lambda c: {"STUDIO_DEFAULT_MODEL": "nope"}),
    case("negative-seed", 2, lambda c: S + ["x", *T, "--seed", "-1"]),
    case("seed-not-a-number", 2, lambda c: S + ["x", *T, "--seed", "abc"]),
    case("seed-too-big", 2, lambda c: S + ["x", *T, "--seed", str(2**63)]),
    case("seed-huge", 2, lambda c: S + ["x", *T, "--seed", "9" * 40]),
    case("seed-plus-count-overflows", 2, lambda c: S + ["x", *T, "--seed", str(2**63 - 1), "-n", "2"]),
    case("count-zero", 2, lambda c: S + ["x", *T, "-n", "0"]),
    case("count-too-big", 2, lambda c: S + ["x", *T, "-n", "257"]),
    case("count-not-a-number", 2, lambda c: S + ["x", *T, "-n", "many"]),
    case("param-above-max", 2, lambda c: S + ["x", *T, "-p", "size=9999"]),
    case("param-below-min", 2, lambda c: S + ["x", *T, "-p", "size=3"]),
    case("param-wrong-type", 2, lambda c: S + ["x", *T, "-p", "size=big"]),
    case("param-float-for-int", 2, lambda c: S + ["x", *T, "-p", "size=8.5"]),
    case("param-without-value", 2, lambda c: S + ["x", *T, "-p", "size"]),
    case("param-without-name", 2, lambda c: S + ["x", *T, "-p", "=5"]),
    case("param-unknown", 2, lambda c: S + ["x", *T, "-p", "bogus=1"]),
    case("param-nan", 2, lambda c: S + ["x", *T, "-p", "delay=nan"]),
    case("param-inf", 2, lambda c: S + ["x", *T, "-p", "delay=inf"]),
    case("param-negative", 2, lambda c: S + ["x", *T, "-p", "delay=-1"]),
    case("param-not-a-choice", 2, lambda c: S + ["x", *T, "-p", "fail=bogus"]),
    case("param-markup", 2, lambda c: S + ["x", *T, "-p", "fail=[/x]"]),
    case("param-undecodable", 2, lambda c: S + ["x", *T, "-p", "fail=\udcff"]),
    case("priority-huge", 2, lambda c: S + ["x", *T, "--priority", "9" * 23]),
    case("priority-not-a-number", 2, lambda c: S + ["x", *T, "--priority", "high"]),
    case("out-under-a-file", 2, lambda c: S + ["x", *T, "--out", c.f("a-file") + "/sub"]),
    case("out-is-a-file", 2, lambda c: S + ["x", *T, "--out", c.f("a-file")]),
    case("unknown-option", 2, lambda c: S + ["x", *T, "--bogus"]),
    case("unknown-command", 2, lambda c: ["frobnicate"]),
    case("unknown-top-option", 2, lambda c: ["--bogus", "jobs"]),
    case("missing-prompt", 2, lambda c: S),
    case("job-fails-at-run-time", 1, lambda c: S + ["x", *T, "-p", "fail=error", "-p", "size=4"]),
    # ---- ids
    case("show-markup-id", 1, lambda c: ["show", "[/x]"]),
    case("show-escape-id", 1, lambda c: ["show", "\x1b]0;pwned\x07\x1b[2J"]),
    case("show-c1-id", 1, lambda c: ["show", "\x9b31m\x85"]),
    case("show-unknown-id", 1, lambda c: ["show", "01XXXXXXXXXXXXXXXXXXXXXXXX"]),
    case("show-undecodable-id", 2, lambda c: ["show", "01\udcff"]),
    case("show-tree-unknown", 1, lambda c: ["show", "nope-nope", "--tree"]),
    case("wait-unknown", 1, lambda c: ["wait", "nope-nope"]),
    case("wait-times-out", 1, lambda c: ["wait", c.queued, "--timeout", "0.05"]),
    case("cancel-unknown", 1, lambda c: ["cancel", "[red]x[/red]"]),
    case("cancel-finished", 2, lambda c: ["cancel", c.job]),
    case("retry-unknown", 1, lambda c: ["retry", "nope-nope"]),
    case("retry-succeeded", 2, lambda c: ["retry", c.job]),
    case("retry-queued", 2, lambda c: ["retry", c.queued]),
    case("regen-unknown", 1, lambda c: ["regen", "nope-nope"]),
    case("regen-param-out-of-range", 2, lambda c: ["regen", c.image, "-p", "size=9999"]),
    case("regen-param-unknown", 2, lambda c: ["regen", c.job, "-p", "bogus=1"]),
    case("regen-negative-seed", 2, lambda c: ["regen", c.job, "--seed", "-4"]),
    case("regen-verify-with-seed", 2, lambda c: ["regen", c.image, "--verify", "--seed", "1"]),
    case("vary-unknown", 1, lambda c: ["vary", "nope-nope"]),
    case("vary-count-zero", 2, lambda c: ["vary", c.image, "-n", "0"]),
    # ---- gallery queries
    case("gallery-bad-since", 2, lambda c: ["gallery", "--plain", "--since", "yesterday"]),
    case("gallery-bad-until", 2, lambda c: ["gallery", "--plain", "--until", "2026-13-45"]),
    case("gallery-since-overflows", 2, lambda c: ["gallery", "--plain", "--since", "99999999d"]),
    case("gallery-bad-status", 2, lambda c: ["gallery", "--plain", "--status", "done"]),
    case("gallery-limit-zero", 2, lambda c: ["gallery", "--plain", "--limit", "0"]),
    case("gallery-limit-huge", 2, lambda c: ["gallery", "--plain", "--limit", "100000"]),
    case("gallery-bad-after", 2, lambda c: ["gallery", "--plain", "--after", "garbage"]),
    case("gallery-after-markup", 2, lambda c: ["gallery", "--plain", "--after", "[/x]:abc"]),
    case("gallery-undecodable-query", 2, lambda c: ["gallery", "--plain", "-q", "red \udcff"]),
    # ---- settings
    case("device-cuda-abc", 1, lambda c: ["jobs"], lambda c: {"STUDIO_DEVICE": "cuda:abc"}),
    case("device-unknown", 1, lambda c: ["jobs"], lambda c: {"STUDIO_DEVICE": "gpu"}),
    case("device-cuda-missing", 1, lambda c: S + ["x", *T], lambda c: {"STUDIO_DEVICE": "cuda"},
         skip=(_cuda_available(), "this machine has CUDA")),
    case("device-cuda-index-missing", 1, lambda c: S + ["x", *T], lambda c: {"STUDIO_DEVICE": "cuda:99"}),
    case("max-attempts-zero", 1, lambda c: ["jobs"], lambda c: {"STUDIO_MAX_ATTEMPTS": "0"}),
    case("max-attempts-text", 1, lambda c: ["jobs"], lambda c: {"STUDIO_MAX_ATTEMPTS": "many"}),
    case("unknown-plugin", 1, lambda c: S + ["x", *T], lambda c: {"STUDIO_LOAD_PLUGINS": "testgen,nope"}),
    case("home-is-a-file", 1, lambda c: ["jobs"], lambda c: {"STUDIO_HOME": c.f("a-file")}),
    case("config-not-json", 1, lambda c: ["jobs"], _config("{not json")),
    case("config-a-list", 1, lambda c: ["jobs"], _config("[1, 2]")),
    case("config-bad-device", 1, lambda c: ["jobs"], _config('{"device": "tpu"}')),
    case("database-url-garbage", 1, lambda c: ["jobs"], lambda c: {"STUDIO_DATABASE_URL": "bogus:///x"}),
    case("database-url-under-a-file", 1, lambda c: ["show", "anything"],
         lambda c: {"STUDIO_DATABASE_URL": f"sqlite:///{c.f('a-file')}/sub/studio.db"}),
    case("database-unreachable", 1, lambda c: ["jobs"],
         lambda c: {"STUDIO_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2"}),
    # ---- database damage
    case("database-zero-bytes", 1, lambda c: ["jobs"], _zero_db),
    case("database-garbage", 1, lambda c: ["jobs"], _garbage_db),
    case("database-is-a-folder", 1, lambda c: ["jobs"], _dir_db),
    case("database-newer-revision", 1, lambda c: ["jobs"], _newer_db),
    # ---- export
    case("export-nothing-selected", 2, lambda c: ["export", "--to", str(c.root / "out1.zip")]),
    case("export-ids-and-filters", 2, lambda c: ["export", c.job, "--all", "--to", str(c.root / "out2.zip")]),
    case("export-unknown-id", 1, lambda c: ["export", "nope-nope", "--to", str(c.root / "out3.zip")]),
    case("export-to-existing-file", 2, lambda c: ["export", "--all", "--to", c.f("traversal.zip")]),
    case("export-to-unwritable", 1, lambda c: ["export", "--all", "--to", "/proc/studio-export.zip"]),
    case("export-under-a-file", 1, lambda c: ["export", "--all", "--to", c.f("a-file") + "/x.zip"]),
    case("export-to-nonempty-folder", 2, lambda c: ["export", "--all", "--to", str(c.files)]),
    case("export-bad-filter", 2, lambda c: ["export", "--since", "someday", "--to", str(c.root / "out4.zip")]),
    # ---- import: files, recipes, archives
    case("import-missing", 1, lambda c: ["import", c.f("missing.png")]),
    case("import-not-png", 1, lambda c: ["import", c.f("text.png")]),
    case("import-no-recipe", 1, lambda c: ["import", c.f("norecipe.png")]),
    case("import-recipe-not-json", 1, lambda c: ["import", c.f("badjson.png")]),
    case("import-recipe-a-list", 1, lambda c: ["import", c.f("list.png")]),
    case("import-no-prompt", 1, lambda c: ["import", c.f("noprompt.png")]),
    case("import-empty-prompt", 1, lambda c: ["import", c.f("emptyprompt.png")]),
    case("import-900kb-prompt", 1, lambda c: ["import", c.f("bigprompt.png")]),
    case("import-long-prompt", 1, lambda c: ["import", c.f("longprompt.png")]),
    case("import-surrogate-prompt", 1, lambda c: ["import", c.f("surrogate.png")]),
    case("import-nul-prompt", 1, lambda c: ["import", c.f("nul.png")]),
    case("import-no-model", 1, lambda c: ["import", c.f("nomodel.png")]),
    case("import-model-not-text", 1, lambda c: ["import", c.f("modelnum.png")]),
    case("import-negative-seed", 1, lambda c: ["import", c.f("negseed.png")]),
    case("import-float-seed", 1, lambda c: ["import", c.f("floatseed.png")]),
    case("import-huge-seed", 1, lambda c: ["import", c.f("hugeseed.png")]),
    case("import-params-a-list", 1, lambda c: ["import", c.f("paramslist.png")]),
    case("import-param-out-of-range", 1, lambda c: ["import", c.f("paramrange.png")]),
    case("import-param-unknown", 1, lambda c: ["import", c.f("paramunknown.png")]),
    case("import-param-wrong-type", 1, lambda c: ["import", c.f("paramtype.png")]),
    case("import-image-param-a-path", 1, lambda c: ["import", c.f("imagepath.png")],
         lambda c: {"STUDIO_LOAD_PLUGINS": "testgen,clip-gen"}),
    case("import-image-param-escapes", 1, lambda c: ["import", c.f("imagedots.png")],
         lambda c: {"STUDIO_LOAD_PLUGINS": "testgen,clip-gen"}),
    case("import-decompression-bomb", 1, lambda c: ["import", c.f("bomb.png")]),
    case("import-too-wide", 1, lambda c: ["import", c.f("wide.png")]),
    case("import-truncated-png", 1, lambda c: ["import", c.f("truncated.png")]),
    case("import-zip-traversal", 1, lambda c: ["import", c.f("traversal.zip")]),
    case("import-zip-absolute", 1, lambda c: ["import", c.f("absolute.zip")]),
    case("import-zip-symlink", 1, lambda c: ["import", c.f("symlink.zip")]),
    case("import-zip-bad-manifest", 1, lambda c: ["import", c.f("badmanifest.zip")]),
    case("import-zip-foreign-manifest", 1, lambda c: ["import", c.f("manifestfmt.zip")]),
    case("import-zip-manifest-missing-file", 1, lambda c: ["import", c.f("manifestmissing.zip")]),
    case("import-zip-manifest-sha", 1, lambda c: ["import", c.f("manifestsha.zip")]),
    case("import-zip-manifest-traversal", 1, lambda c: ["import", c.f("manifesttraversal.zip")]),
    case("import-zip-no-recipe", 1, lambda c: ["import", c.f("zipnorecipe.zip")]),
    case("import-zip-corrupt", 1, lambda c: ["import", c.f("corrupt.zip")]),
    case("import-zip-truncated", 1, lambda c: ["import", c.f("truncated.zip")]),
    case("import-folder-symlink", 1, lambda c: ["import", c.f("linkdir")]),
    case("import-one-bad-of-two", 1, lambda c: ["import", c.f("traversal.zip"), c.f("norecipe.png")]),
    # ---- model import: payloads and broken weights never run, never load
    *[
        case(f"models-import-{name}", 1,
             lambda c, name=name: ["models", "import", "galip", "bad", "--checkpoint", c.f(f"{name}.pth"),
                                   "--clip", str(Path(__file__).parents[1] / "studio/ml/weights/clip-small.safetensors"),
                                   "--clip-arch", "studio-bundled"],
             lambda c: {"STUDIO_LOAD_PLUGINS": "testgen,galip"})
        for name in ("nan", "inf", "wrongkeys", "notgalip", "payload", "yaml", "torchscript", "empty")
    ],
]


@pytest.mark.parametrize("code, args, env", CASES)
def test_bad_input_is_one_line_and_changes_nothing(ctx, code, args, env):
    before = snapshot(ctx.home)
    environ = {"STUDIO_HOME": str(ctx.home), "STUDIO_LOAD_PLUGINS": PLUGINS, "STUDIO_DEVICE": None,
               "STUDIO_DATABASE_URL": None, "STUDIO_DEFAULT_MODEL": None, "STUDIO_MAX_ATTEMPTS": None,
               "COLUMNS": "100"}
    if env is not None:
        environ.update(env(ctx))
    result = CliRunner().invoke(cli, args(ctx), env=environ)
    lines = result.stderr.strip().splitlines()
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stderr, result.stdout)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.stderr, result.stderr
    assert not any(ch in result.stderr for ch in "\x1b\x07\x9b\x85"), repr(result.stderr)
    jobs, images, files = snapshot(ctx.home)
    assert not kept(before[0], jobs) and not kept(before[1], images), "stored rows changed"
    assert not kept(before[2], files), "stored files changed"
    assert not (ctx.files / "PWNED").exists(), "a payload ran"


def test_the_table_is_large_enough():
    assert len(CASES) >= 80
