"""What other tools read from a Studio PNG, each read back with that convention's own rules,
and images written before those chunks existed still verifying bit for bit."""

from __future__ import annotations

import json
import re
import struct
import zlib

from studio import store
from studio.gallery import actions

# ---- readers, as the other tools parse ------------------------------------------------------

# AUTOMATIC1111's web UI (modules/infotext_utils.py, parse_generation_parameters): the last
# line holds "Key: value" pairs (at least three, or it is part of the prompt), values that hold
# commas are JSON-quoted, "WxH" values split into KEY-1 and KEY-2; the lines before are the
# prompt, up to a line that starts with "Negative prompt:".
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def a1111_parse(text: str) -> dict:
    res, prompt, negative, done_with_prompt = {}, "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for key, value in RE_PARAM.findall(lastline):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        size = RE_IMAGESIZE.match(value)
        if size is not None:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    res["Prompt"], res["Negative prompt"] = prompt, negative
    return res


def png_text_chunks(data: bytes) -> dict[str, str]:
    """tEXt, zTXt and iTXt chunks as the PNG specification defines them (what exiftool reads)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, found = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc
        pos += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            found[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, _method, rest = rest[0], rest[1], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            found[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
    return found


# ---- tests -------------------------------------------------------------------------------------


def test_every_convention_reads_prompt_seed_size_and_model(engine, make, studio_home):
    prompt = "a red circle, above a blue square: big"
    job = make(prompt, seed=42, size=12)
    image = engine.images(job.id)[0]
    data = (studio_home / image.path).read_bytes()
    chunks = png_text_chunks(data)

    info = a1111_parse(chunks["parameters"])
    assert info["Prompt"] == prompt and info["Negative prompt"] == ""
    assert info["Seed"] == "42" and (info["Size-1"], info["Size-2"]) == ("12", "12")
    assert info["Model"] == "testgen" and info["Model hash"] == image.recipe["weights_sha256"][:10]
    assert info["Steps"] == str(image.recipe["params"]["steps"]) and info["Sampler"]
    assert json.loads(info["Studio params"]) == image.recipe["params"]
    assert info["Studio weights sha256"] == image.recipe["weights_sha256"]

    assert chunks["Description"] == prompt  # the PNG specification's keywords
    assert chunks["Software"].startswith("Studio ")
    assert json.loads(chunks["studio"]) == image.recipe  # the exact recipe, as before
    assert store.read_recipe(studio_home / image.path) == image.recipe


def test_prompts_beyond_latin1_and_with_line_breaks(engine, make, studio_home):
    job = make("un cœur rouge ♥ sur fond bleu", seed=3)
    data = (studio_home / engine.images(job.id)[0].path).read_bytes()
    chunks = png_text_chunks(data)
    assert chunks["Description"] == "un cœur rouge ♥ sur fond bleu"
    assert a1111_parse(chunks["parameters"])["Prompt"] == "un cœur rouge ♥ sur fond bleu"
    text = store.parameters_text({"prompt": "two\nlines", "seed": 1, "model": "m"}, 4, 4)
    assert a1111_parse(text)["Prompt"] == "two lines" and a1111_parse(text)["Seed"] == "1"


def test_the_recipe_chunk_is_the_same_bytes_as_before(engine, make, studio_home):
    job = make("a green square", seed=5)
    image = engine.images(job.id)[0]
    data = (studio_home / image.path).read_bytes()
    text = png_text_chunks(data)["studio"]
    assert text == json.dumps(image.recipe, sort_keys=True, separators=(",", ":"))
    # the format-1 file (the recipe chunk alone) is what versions before the interop chunks wrote
    assert len(store.format_digests(data)) == 2


def test_an_image_made_before_the_interop_chunks_still_verifies(run, engine, make, monkeypatch, studio_home):
    original = store.encode_png
    monkeypatch.setattr(store, "encode_png", lambda image, recipe: original(image, recipe, 1))
    job = make("a yellow triangle", count=2, seed=9)
    old = engine.images(job.id)
    assert "parameters" not in png_text_chunks((studio_home / old[0].path).read_bytes())
    monkeypatch.setattr(store, "encode_png", original)

    result = actions.verify(engine, actions.source(engine, job.id))
    assert result.ok, result.as_dict()
    assert all(c.expected != c.actual for c in result.checks)  # new files carry the new chunks...
    new = engine.images(result.job.id)
    assert "parameters" in png_text_chunks((studio_home / new[0].path).read_bytes())
    out = run("regen", old[0].id, "--verify")  # ...and the CLI says it matches
    assert out.exit_code == 0 and "matches bit for bit" in out.stderr, out.output
