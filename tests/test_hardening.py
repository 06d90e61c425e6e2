"""Hostile text, damaged files, interrupted submits and recipes that name files.

- Property tests (Hypothesis): any text (markup brackets, control characters, terminal escapes,
  lone surrogates, right-to-left) as prompts, ids and query words never makes `submit`, `jobs`,
  `show`, `gallery --plain` or the gallery's rendering raise, and never reaches the output raw.
- Store integrity: a stored file damaged in each way is noticed by show, the gallery, export,
  `regen --verify` and `studio check`, and repaired from bytes that hash to its name.
- Interrupts: however a submitting process ends, its job ends in a final state.
- Inputs: GALIP's image parameter is stored at submit; no recipe makes Studio open a path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from studio import store
from studio.cli import cli
from studio.config import load_settings
from studio.engine import Engine
from studio.plumbing import visible

pytestmark = pytest.mark.usefixtures("testgen_installed")

BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def raw_controls(text: str) -> list[str]:
    """Characters that must never reach a terminal raw (newlines between lines are fine)."""
    return [ch for ch in text if ch != "\n" and (unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI)]


@pytest.fixture
def env(studio_home, monkeypatch):
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "testgen")
    monkeypatch.setenv("COLUMNS", "120")
    return {"STUDIO_HOME": str(studio_home)}


def run(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# ---- the one helper -------------------------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    ("a red [/x] circle", "a red [/x] circle"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("\x9b31m\x85", "\\x9b31m\\x85"),
    ("line\nbreak\ttab", "line\\nbreak\\ttab"),
    ("\udcff", "\\udcff"),
    ("abc\u202edef", "abc\\u202edef"),
    ("שלום עולם", "שלום עולם"),
    ("emoji 👩‍🎨", "emoji 👩‍🎨"),
])
def test_visible_spells_out_what_a_terminal_would_act_on(text, shown):
    assert visible(text) == shown


def test_markup_in_a_prompt_is_printed_as_typed(env):
    prompt = "[bold]r[/] :smile: [/x] [link=x]z[/link]"
    job = json.loads(run("submit", prompt, "-m", "testgen", "--json").stdout)
    for args in (["jobs"], ["gallery", "--plain"], ["show", job["id"]], ["show", job["id"], "--tree"]):
        out = run(*args, env={"COLUMNS": "250"}).stdout
        assert prompt in out, out
    error = run("show", "[/x]").stderr
    assert error.strip() == "error: no job or image with id '[/X]'"


# ---- properties -----------------------------------------------------------------------------

TOKENS = ["[", "]", "/", "\\", "=", "[/x]", "[bold]", "[link=x]", "\x1b", "\x1b]0;t\x07", "\x07", "\x9b", "\x85",
          "\u202e", "\u2066", "\x00", "\ud800", "\udcff", "\n", "\r", "\t", "\x7f", "א", "ب", " "]
nasty = st.lists(st.one_of(st.characters(codec=None), st.sampled_from(TOKENS)), max_size=20).map("".join)

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])


@PROPERTY
@given(prompt=nasty)
def test_any_prompt_through_submit_jobs_show_and_the_gallery(env, prompt):
    result = run("submit", prompt, "-m", "testgen", "-p", "size=4", "--json")
    assert result.exit_code in (0, 2), result.stderr
    assert not raw_controls(result.stderr), repr(result.stderr)
    if result.exit_code == 0:
        job_id = json.loads(result.stdout)["id"]
        for args in (["show", job_id], ["jobs", "--limit", "3"], ["gallery", "--plain", "--limit", "3"], ["show", job_id, "--tree"]):
            shown = run(*args)
            assert shown.exit_code == 0, shown.stderr
            assert not raw_controls(shown.output), (args, repr(shown.output))
        from studio.gallery.app import caption, fields_table, recipe_renderable
        from studio.gallery.query import Gallery, filters_from
        from rich.console import Console

        engine = Engine(load_settings())
        view = Gallery(engine.db, engine.settings.home)
        entry = view.page(filters_from(), limit=1).entries[0]
        console = Console(file=io.StringIO(), width=80, color_system=None)
        console.print(fields_table(entry, view.home, "damaged"))
        console.print(recipe_renderable({"prompt": entry.prompt, "params": entry.params}))
        for segment in caption(entry, 16):
            console.print(segment.text, markup=False)
        assert not raw_controls(console.file.getvalue()), repr(console.file.getvalue())
        engine.db.dispose()


@PROPERTY
@given(word=nasty)
def test_any_id_or_query_word_is_one_line(env, word):
    run("submit", "a red circle", "-m", "testgen", "-p", "size=4")
    for args, codes in ((["show", word], (1, 2)), (["cancel", word], (1, 2)), (["gallery", "--plain", "-q", word], (0, 2)),
                        (["gallery", "--plain", "-m", word], (0, 2)), (["regen", word], (1, 2))):
        result = run(*args)
        assert result.exit_code in codes, (args, result.stderr)
        assert not raw_controls(result.output), (args, repr(result.output))
        if result.exit_code:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---- store integrity ------------------------------------------------------------------------


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def append(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"extra")


def delete(path: Path) -> None:
    path.unlink()


def replace_with_other_png(path: Path) -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    path.write_bytes(out.getvalue())


DAMAGE = [flip, truncate, append, delete, replace_with_other_png]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_file_is_noticed_everywhere_and_repaired(env, studio_home, tmp_path, damage):
    job = json.loads(run("submit", "a blue square", "-m", "testgen", "-p", "size=8", "-n", "2", "--json").stdout)
    image = job["images"][0]
    path = Path(image["file"])
    size = path.stat().st_size
    damage(path)
    state = "missing" if damage is delete else "damaged"
    if damage is flip:
        assert path.stat().st_size == size  # same size: only the hash tells

    shown = json.loads(run("show", job["id"], "--json").stdout)
    assert [i["file_state"] for i in shown["images"]] == [state, "ok"]
    assert f"the stored file is {state}" in run("show", job["id"]).stdout
    assert f"file {state}" in run("gallery", "--plain").stdout
    assert json.loads(run("gallery", "--json").stdout)[-1]["file_state"] in (state, "ok")

    from studio.gallery.thumbs import ThumbnailCache

    thumb = str(ThumbnailCache(studio_home).get(image["path"], 16, 5))
    assert ("damaged file" if state == "damaged" else "missing file") in thumb

    refused = run("export", "--all", "--to", str(tmp_path / "out.zip"))
    assert refused.exit_code == 1 and "export refused" in refused.stderr and not (tmp_path / "out.zip").exists()

    checked = run("check", "--json")
    assert checked.exit_code == 1 and len(checked.stderr.strip().splitlines()) == 1
    assert [(p["kind"], p["path"]) for p in json.loads(checked.stdout)["problems"]] == [(state, image["path"])]

    verified = run("regen", image["id"], "--verify")
    assert verified.exit_code == 0, verified.stderr
    assert "repaired" in verified.stderr and "matches bit for bit" in verified.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == image["sha256"]
    assert run("check").exit_code == 0
    assert run("export", "--all", "--to", str(tmp_path / "out.zip")).exit_code == 0


def test_check_repair_remakes_files_and_removes_old_strays(env, studio_home):
    job = json.loads(run("submit", "a green circle", "-m", "testgen", "-p", "size=8", "-n", "3", "--json").stdout)
    files = [Path(i["file"]) for i in job["images"]]
    flip(files[0])
    delete(files[1])
    stray = studio_home / "images" / "ab" / "stray.png"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stray, (old, old))
    young = studio_home / "images" / ".tmp-writing.png"
    young.write_bytes(b"y")
    report = run("check", "--repair", "--json")
    problems = {p["kind"]: p for p in json.loads(report.stdout)["problems"]}
    assert problems["damaged"]["repaired"] and problems["missing"]["repaired"] and problems["orphan"]["repaired"]
    assert not problems["temp"]["repaired"] and young.exists()  # too young: a job may be writing it
    assert report.exit_code == 1  # the young temp file is still there
    assert all(hashlib.sha256(f.read_bytes()).hexdigest() == f.stem for f in files) and not stray.exists()
    young.unlink()
    assert run("check").exit_code == 0


def test_saving_rewrites_a_same_size_damaged_file(studio_home):
    picture = Image.new("RGB", (8, 8), (9, 9, 9))
    first = store.save_image(studio_home, picture, {"prompt": "p"})
    path = studio_home / first.path
    flip(path)
    store.save_image(studio_home, picture, {"prompt": "p"})
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first.sha256


def test_files_follow_the_umask(env, studio_home, tmp_path):
    old = os.umask(0o022)
    try:
        job = json.loads(run("submit", "x", "-m", "testgen", "-p", "size=4", "--json", "--out", str(tmp_path / "o")).stdout)
        assert run("export", "--all", "--to", str(tmp_path / "e.zip")).exit_code == 0
    finally:
        os.umask(old)
    for path in (Path(job["images"][0]["file"]), tmp_path / "e.zip", *(tmp_path / "o").iterdir()):
        assert path.stat().st_mode & 0o777 == 0o644, path


# ---- interrupts -----------------------------------------------------------------------------


def studio_command() -> list[str]:
    exe = Path(sys.executable).with_name("studio")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "studio"]


@pytest.mark.parametrize("sig, after", [(signal.SIGINT, 0.4), (signal.SIGINT, 1.5), (signal.SIGINT, 3.0),
                                        (signal.SIGTERM, 1.5), (signal.SIGHUP, 3.0)])
def test_however_a_submit_ends_its_job_ends(env, studio_home, sig, after):
    environ = {**os.environ, "STUDIO_HOME": str(studio_home), "STUDIO_LOAD_PLUGINS": "testgen"}
    proc = subprocess.Popen([*studio_command(), "submit", "slow", "-m", "testgen", "-p", "delay=0.5", "-p", "steps=20"],
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(after)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err
    listed = json.loads(run("jobs", "--json").stdout)
    assert all(j["status"] in ("succeeded", "failed", "canceled") for j in listed), listed
    for job in listed:  # and each can be retried
        if job["status"] != "succeeded":
            assert run("retry", job["id"], "-h").exit_code == 0


def test_cancel_of_a_job_whose_process_is_gone_ends_it(env, studio_home):
    engine = Engine(load_settings())
    job = engine.submit("orphan", "testgen", params={"size": 4})
    dead = subprocess.Popen(["true"])
    dead.wait()
    with engine.db.session() as session:
        from studio.db import Job

        row = session.get(Job, job.id)
        row.status, row.worker_id = "running", f"local:{socket.gethostname()}:{dead.pid}"
    result = run("cancel", job.id)
    assert result.exit_code == 0 and "canceled" in result.stdout
    assert engine.get(job.id).status == "canceled"
    assert run("retry", job.id).exit_code == 0 and engine.get(job.id).status == "succeeded"
    engine.db.dispose()


# ---- image inputs: stored at submit, never a path from a recipe ------------------------------


@pytest.fixture
def galip_env(env, monkeypatch):
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "testgen,galip,clip-gen")
    return env


@pytest.mark.parametrize("model", ["galip", "clip-gen"])
@pytest.mark.parametrize("kind", ["fifo", "missing", "text", "folder", "bomb"])
def test_an_image_parameter_that_is_not_a_readable_image_is_refused_at_submit(galip_env, tmp_path, model, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "folder":
        path.mkdir()
    elif kind == "bomb":
        Image.new("1", (5000, 5000)).save(path)
    result = run("submit", "x", "-m", model, "-p", f"image={path}")
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not run("jobs", "--json").stdout.strip("[]\n ")  # nothing stored


def test_galip_stores_its_image_parameter_under_inputs(galip_env, studio_home, tmp_path):
    picture = tmp_path / "p.png"
    Image.new("RGB", (20, 10), (200, 0, 0)).save(picture)
    spec, _prompt, _seed, params = Engine(load_settings()).validate("x", "galip", 1, 1, {"image": str(picture)})
    assert params["image"].startswith("inputs/") and (studio_home / params["image"]).is_file()


@pytest.mark.parametrize("value", ["/etc/passwd", "../../etc/passwd", "inputs/../../secret.png", "inputs/" + "0" * 64 + ".png"])
def test_no_recipe_makes_studio_open_a_path(galip_env, studio_home, value):
    engine = Engine(load_settings())
    job = engine.submit("x", "testgen", params={"size": 4})
    with engine.db.session() as session:
        from studio.db import Job

        row = session.get(Job, job.id)
        row.model_id, row.status, row.params = "galip", "succeeded", {"image": value}
    for args in (["regen", job.id], ["vary", job.id, "-n", "1"]):
        result = run(*args)
        assert result.exit_code in (1, 2) and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "stored input" in result.stderr or "missing" in result.stderr
    assert [j["id"] for j in json.loads(run("jobs", "--json").stdout)] == [job.id]  # no job was made
    engine.db.dispose()


def test_unknown_config_keys_are_warned_with_the_closest_key(studio_home, caplog):
    studio_home.mkdir(parents=True, exist_ok=True)
    (studio_home / "config.json").write_text('{"devcie": "cpu", "zzz": 1}')
    with caplog.at_level("WARNING"):
        load_settings()
    assert "did you mean 'device'" in caplog.text and "'zzz'" in caplog.text


def test_ctrl_c_while_the_command_line_loads_ends_quietly():
    """A Ctrl-C that lands while ``studio`` is still importing its command line (the first few
    tenths of a second, longer on a busy machine) ends the process by the signal, without a
    traceback; importing ``studio.cli`` as a library keeps Python's KeyboardInterrupt."""
    hook = ("import builtins, os, signal\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # a background parent may ignore it
            "real = builtins.__import__\n"
            "def interrupting(name, *args, **kwargs):\n"
            "    if name == 'studio.cli.common' or (name == 'studio.cli' and args and args[2] and 'common' in args[2]):\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = interrupting\n")
    done = subprocess.run([sys.executable, "-c", hook + "from studio.entry import run\nrun()\nprint('not interrupted')\n"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (-signal.SIGINT, "", "")
    library = subprocess.run([sys.executable, "-c", hook + "try:\n    import studio.cli\nexcept KeyboardInterrupt:\n"
                              "    print('KeyboardInterrupt')\n"], capture_output=True, text=True, timeout=60)
    assert (library.returncode, library.stdout) == (0, "KeyboardInterrupt\n")
