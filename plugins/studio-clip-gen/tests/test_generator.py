"""The generator: seeds, batch invariance, re-ranking records, conditioning on images, failures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.generators import GenerationError, JobCanceled, Request
from studio_clip_gen.generator import ClipGenGenerator, candidate_seed

PARAMS = {"temperature": 1.0, "top_k": 8, "top_p": 0.95, "candidates": 1, "keep": 1, "image": ""}


@pytest.fixture(scope="module")
def generator(model_folder):
    gen = ClipGenGenerator("clip-gen/tiny", model_folder)
    gen.load("cpu")
    return gen


def _run(generator, requests, calls=None):
    return generator.generate(requests, lambda d, t: calls.append((d, t)) if calls is not None else None)


def test_describe(generator):
    info = generator.describe()
    assert info["model"] == "clip-gen/tiny" and info["resolution"] == 16 and len(info["weights_sha256"]) == 64
    assert info["dtype"] == "float32"


def test_same_seed_same_pixels_batched_or_not_and_progress(generator):
    requests = [Request("a red square", 5, PARAMS, 0), Request("a blue circle", 6, PARAMS, 1)]
    calls = []
    batch = _run(generator, requests, calls)
    assert [r.image.size for r in batch] == [(16, 16)] * 2
    alone = _run(generator, [requests[1]])
    assert alone[0].image.tobytes() == batch[1].image.tobytes()
    assert _run(generator, [requests[0]])[0].image.tobytes() == batch[0].image.tobytes()
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) >= 64  # one call per token step


def test_a_repeated_prompt_is_encoded_once_and_draws_the_same_pixels(model_folder, monkeypatch):
    from studio.api import prompt_cache
    from studio_clip_gen import clip_embed, generator as module

    encoded = []
    real = clip_embed.encode_text
    monkeypatch.setattr(clip_embed, "encode_text",
                        lambda clip, prompts: encoded.append(list(prompts)) or real(clip, prompts))
    monkeypatch.setattr(module, "prompt_cache", lambda encode: prompt_cache(encode, size=2))
    gen = ClipGenGenerator("clip-gen/tiny", model_folder)
    gen.load("cpu")
    first = _run(gen, [Request("a red square", 5, PARAMS)])[0].image.tobytes()
    assert _run(gen, [Request("a red square", 5, PARAMS)])[0].image.tobytes() == first
    assert encoded == [["a red square"]]
    for prompt in ("a blue circle", "a red square", "a green square", "a blue circle"):
        _run(gen, [Request(prompt, 5, PARAMS)])  # a use keeps a prompt; the least recently used leaves
    assert [p for (p,) in encoded] == ["a red square", "a blue circle", "a green square", "a blue circle"]
    for prompt in ("a green square", "a blue circle"):  # the two kept: neither is encoded again
        _run(gen, [Request(prompt, 5, PARAMS)])
    assert len(encoded) == 4 and gen._text_embedding.cache_info().currsize == 2


def test_candidates_are_reranked_recorded_and_regenerable(generator):
    params = {**PARAMS, "candidates": 3, "keep": 3}
    (result,) = _run(generator, [Request("a green square", 11, params)])
    cands = result.extra["candidates"]
    assert [c["seed"] for c in cands] == [candidate_seed(11, j) for j in range(3)] and cands[0]["seed"] == 11
    kept = result.extra["kept"]
    scores = {c["index"]: c["clip_score"] for c in cands}
    assert [scores[k["index"]] for k in kept] == sorted(scores.values(), reverse=True)
    assert result.image.size == (48, 16)  # a row of the 3 kept candidates
    # any candidate is re-made alone from its recorded seed
    second = kept[1]
    (alone,) = _run(generator, [Request("a green square", second["seed"], PARAMS)])
    tile = result.image.crop((16, 0, 32, 16))
    assert alone.image.tobytes() == tile.tobytes()


def test_reranking_passes_over_near_blank_candidates_unless_all_are(generator, monkeypatch):
    import studio.api

    params = {**PARAMS, "candidates": 4}
    clip_only = _run(generator, [Request("a red circle", 21, {**params, "skip_blank": False})])[0]
    scores = {c["index"]: c["clip_score"] for c in clip_only.extra["candidates"]}
    best, runner_up = sorted(scores, key=lambda j: -scores[j])[:2]
    assert clip_only.extra["kept"][0]["index"] == best and "near_blank" not in clip_only.extra
    # the candidate CLIP likes best is judged near-blank: the next one is kept, and the record says why
    best_pixels = clip_only.image.tobytes()
    monkeypatch.setattr(studio.api, "is_near_blank", lambda image: image.tobytes() == best_pixels)
    (result,) = _run(generator, [Request("a red circle", 21, {**params, "skip_blank": True})])
    assert result.extra["kept"][0]["index"] == runner_up and result.extra["near_blank"] == [best]
    (alone,) = _run(generator, [Request("a red circle", candidate_seed(21, runner_up), PARAMS)])
    assert result.image.tobytes() == alone.image.tobytes()
    # every candidate near-blank: CLIP's choice stands
    monkeypatch.setattr(studio.api, "is_near_blank", lambda image: True)
    (all_blank,) = _run(generator, [Request("a red circle", 21, {**params, "skip_blank": True})])
    assert all_blank.image.tobytes() == best_pixels and all_blank.extra["near_blank"] == [0, 1, 2, 3]


def test_skip_blank_is_left_out_of_recipes_made_before_it(model_folder):
    """An old recipe has no skip_blank; it regenerates with CLIP's ranking alone, and a new job records it."""
    from studio.generators import ModelSpec
    from studio_clip_gen import plugin

    spec = ModelSpec(id="clip-gen/tiny", plugin="clip-gen", factory=lambda: None,
                     params=plugin.params_for(model_folder, {}))
    assert spec.validate_params({})["skip_blank"] is True  # new jobs record it
    assert "skip_blank" not in spec.validate_params({"skip_blank": "off"})  # as a recipe from before it


def test_progress_cancels(generator):
    def progress(done, total):
        if done >= 3:
            raise JobCanceled()

    with pytest.raises(JobCanceled):
        generator.generate([Request("a red square", 1, PARAMS)], progress)


def test_image_conditioning_reads_only_stored_inputs(generator, tmp_path):
    from PIL import Image

    from studio.config import load_settings
    from studio.inputs import store_input

    path = tmp_path / "cond.png"
    Image.new("RGB", (40, 30), (220, 40, 40)).save(path)
    reference = store_input(load_settings(), str(path))
    (result,) = _run(generator, [Request("ignored", 2, {**PARAMS, "image": reference})])
    assert result.extra["condition"] == "image"
    # a plain path (even of a real image) never reaches the file system through a generator
    for bad in (str(path), "inputs/../../etc/passwd", "inputs/" + "0" * 64 + ".png"):
        with pytest.raises(GenerationError, match="cannot read the conditioning image"):
            _run(generator, [Request("x", 2, {**PARAMS, "image": bad})])


def test_nan_weights_fail_the_job(model_folder):
    gen = ClipGenGenerator("clip-gen/tiny", model_folder)
    gen.load("cpu")
    with torch.no_grad():
        gen.vqgan.post_quant_conv.weight.fill_(float("nan"))
    with pytest.raises(GenerationError, match="NaN"):
        _run(gen, [Request("a red square", 1, PARAMS)])


def test_unloadable_folder_is_a_generation_error(tmp_path):
    (tmp_path / "model.json").write_text('{"format": "studio-clip-gen-1", "vqgan": "missing.safetensors"}')
    with pytest.raises(GenerationError, match="cannot be loaded"):
        ClipGenGenerator("clip-gen/broken", tmp_path).load("cpu")


@pytest.fixture(scope="module")
def rerank_folder(tmp_path_factory, parts):
    """The model folder's parts plus a second, differently initialised CLIP that scores candidates."""
    from studio.ml import clip_configs
    from studio_clip_gen.checkpoints import write_safetensors
    from studio_clip_gen.model_dir import assemble

    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("rerank")
    write_safetensors(root / "judge.safetensors", clip_configs.create_small_clip("studio-tiny-64").state_dict(), {})
    assemble(root / "model", vqgan=parts / "vqgan.safetensors", transformer=parts / "transformer.safetensors",
             clip=parts / "clip.safetensors", clip_arch="studio-tiny-64", rerank_clip=root / "judge.safetensors",
             rerank_clip_arch="studio-tiny-64")
    return root / "model"


def test_a_rerank_clip_scores_the_candidates_and_leaves_each_candidate_as_it_was(generator, rerank_folder):
    from studio_clip_gen import model_dir
    from studio_clip_gen.clip_embed import encode_images, encode_text

    judged = ClipGenGenerator("clip-gen/judged", rerank_folder)
    judged.load("cpu")
    assert judged.rerank_clip is not judged.clip and judged.describe()["rerank_clip"] == "studio-tiny-64 (rerank-clip.safetensors)"
    assert model_dir.read_manifest(rerank_folder)["rerank"] == {"kind": "open_clip", "arch": "studio-tiny-64",
                                                                 "file": "rerank-clip.safetensors"}
    # another file decides which candidate is the image: another digest; the folder without it keeps its own
    assert judged.describe()["weights_sha256"] != generator.describe()["weights_sha256"]
    params = {**PARAMS, "candidates": 4, "keep": 4}
    (plain,) = _run(generator, [Request("a green square", 11, params)])
    (result,) = _run(judged, [Request("a green square", 11, params)])
    tiles = {k["index"]: result.image.crop((16 * n, 0, 16 * (n + 1), 16)) for n, k in enumerate(result.extra["kept"])}
    plain_tiles = {k["index"]: plain.image.crop((16 * n, 0, 16 * (n + 1), 16)).tobytes()
                   for n, k in enumerate(plain.extra["kept"])}
    assert {j: t.tobytes() for j, t in tiles.items()} == plain_tiles  # the same four candidates
    pixels = torch.stack([torch.from_numpy(np.array(tiles[j])).permute(2, 0, 1).float() / 127.5 - 1 for j in range(4)])
    expected = (encode_images(judged.rerank_clip, pixels) @ encode_text(judged.rerank_clip, ["a green square"])[0]).tolist()
    recorded = {c["index"]: c["clip_score"] for c in result.extra["candidates"]}
    assert [recorded[j] for j in range(4)] == pytest.approx(expected, abs=2e-3)  # tiles are 8-bit, scores were not
    assert recorded != {c["index"]: c["clip_score"] for c in plain.extra["candidates"]}


def test_a_rerank_clip_scores_against_its_own_embedding_of_a_conditioning_image(generator, rerank_folder, tmp_path):
    from PIL import Image

    from studio.config import load_settings
    from studio.inputs import store_input

    judged = ClipGenGenerator("clip-gen/judged", rerank_folder)
    judged.load("cpu")
    path = tmp_path / "cond.png"
    Image.new("RGB", (40, 30), (220, 40, 40)).save(path)
    params = {**PARAMS, "candidates": 3, "keep": 3, "image": store_input(load_settings(), str(path))}
    (plain,) = _run(generator, [Request("ignored", 2, params)])
    (result,) = _run(judged, [Request("ignored", 2, params)])
    plan = judged._plan(Request("ignored", 2, params))
    assert torch.equal(plan["cond"], generator._plan(Request("ignored", 2, params))["cond"])  # sampled alike
    # the re-ranking CLIP compares each candidate with its own embedding of the conditioning image
    from studio_clip_gen.clip_embed import encode_images

    pixels = judged._conditioning_pixels(params["image"])
    tiles = [result.image.crop((16 * n, 0, 16 * (n + 1), 16)) for n in range(3)]
    x = torch.stack([torch.from_numpy(np.array(t)).permute(2, 0, 1).float() / 127.5 - 1 for t in tiles])
    expected = (encode_images(judged.rerank_clip, x) @ encode_images(judged.rerank_clip, pixels)[0]).tolist()
    recorded = {c["index"]: c["clip_score"] for c in result.extra["candidates"]}
    assert [recorded[k["index"]] for k in result.extra["kept"]] == pytest.approx(expected, abs=2e-3)
    assert recorded != {c["index"]: c["clip_score"] for c in plain.extra["candidates"]}


def test_a_rerank_clip_that_is_the_conditioning_clip_is_loaded_once_and_scores_alike(generator, parts, tmp_path):
    from studio_clip_gen import model_dir
    from studio_clip_gen.model_dir import assemble

    assemble(tmp_path / "same", vqgan=parts / "vqgan.safetensors", transformer=parts / "transformer.safetensors",
             clip=parts / "clip.safetensors", clip_arch="studio-tiny-64", rerank_clip=parts / "clip.safetensors",
             rerank_clip_arch="studio-tiny-64")
    manifest = model_dir.read_manifest(tmp_path / "same")
    assert manifest["rerank"]["file"] != manifest["clip"]["file"] and model_dir.rerank_is_clip(tmp_path / "same", manifest)
    same = ClipGenGenerator("clip-gen/same", tmp_path / "same")
    same.load("cpu")
    assert same.rerank_clip is same.clip and same.describe()["rerank_clip"] == "studio-tiny-64 (rerank-clip.safetensors)"
    params = {**PARAMS, "candidates": 3, "keep": 3}
    (plain,) = _run(generator, [Request("a blue circle", 4, params)])
    (result,) = _run(same, [Request("a blue circle", 4, params)])
    assert result.image.tobytes() == plain.image.tobytes() and result.extra["candidates"] == plain.extra["candidates"]
    # another file with the same architecture is not the same CLIP
    (tmp_path / "same" / "rerank-clip.safetensors").write_bytes(b"not the same bytes")
    assert not model_dir.rerank_is_clip(tmp_path / "same", manifest)


@pytest.fixture(scope="module")
def claims_folder(tmp_path_factory, parts):
    """The model folder's parts plus a (randomly initialised) claims classifier for 16px pictures."""
    from studio.ml.claims import ClaimsNet, save_claims_net
    from studio_clip_gen.model_dir import assemble

    torch.manual_seed(2)
    root = tmp_path_factory.mktemp("claims")
    save_claims_net(ClaimsNet(image_size=16, ch=8), root / "claims.safetensors")
    assemble(root / "model", vqgan=parts / "vqgan.safetensors", transformer=parts / "transformer.safetensors",
             clip=parts / "clip.safetensors", clip_arch="studio-tiny-64", claims=root / "claims.safetensors")
    return root / "model"


def test_rank_scores_add_standardised_claims_to_clip_and_keep_clip_alone_without_them():
    from studio_clip_gen.generator import rank_scores

    assert rank_scores([(0.3, None), (0.5, None), (0.1, None)]) == [0.3, 0.5, 0.1]
    # the CLIP's favourite (index 1) reads as the wrong shape; a near second (index 0) as the right one
    ranked = rank_scores([(0.48, -0.05), (0.50, -2.0), (0.10, -1.0)])
    assert max(range(3), key=ranked.__getitem__) == 0
    # the same differences at another scale rank the same (cosines vs log-likelihoods)
    scaled = rank_scores([(4.8, -0.5), (5.0, -20.0), (1.0, -10.0)])
    assert scaled == pytest.approx(ranked)
    # every candidate reads right (claims within noise): the CLIP decides
    close = rank_scores([(0.40, -0.0101), (0.50, -0.0102), (0.45, -0.0100)])
    assert max(range(3), key=close.__getitem__) == 1
    # weighted: the CLIP's part scaled, 1 the plain sum, 0 the classifier alone
    scores = [(0.40, -0.0101), (0.50, -0.0102), (0.45, -0.0100)]
    assert rank_scores(scores, 1.0) == close
    alone = rank_scores(scores, 0.0)
    assert max(range(3), key=alone.__getitem__) == 2
    assert sorted(range(3), key=alone.__getitem__) == sorted(range(3), key=lambda j: scores[j][1])
    half = rank_scores(scores, 0.5)
    assert half == pytest.approx([(a + c) / 2 for a, c in zip(alone, close)])
    assert rank_scores([(0.3, None), (0.5, None)], 0.0) == [0.3, 0.5]  # no claims: the CLIP whatever the weight


def test_a_claims_classifier_scores_grammar_prompts_and_leaves_other_prompts_to_the_clip(generator, claims_folder):
    from studio.ml.claims import caption_score
    from studio.ml.shapes import parse_caption
    from studio_clip_gen import model_dir
    from studio_clip_gen.generator import rank_scores

    judged = ClipGenGenerator("clip-gen/claims", claims_folder)
    judged.load("cpu")
    assert judged.describe()["claims"] == "claims.safetensors"
    assert judged.describe()["claims_clip_weight"] == 0.0
    assert model_dir.read_manifest(claims_folder)["claims"] == {"file": "claims.safetensors", "clip_weight": 0.0}
    assert judged.describe()["weights_sha256"] != generator.describe()["weights_sha256"]
    params = {**PARAMS, "candidates": 4, "keep": 4}
    (plain,) = _run(generator, [Request("a green square", 11, params)])
    (result,) = _run(judged, [Request("a green square", 11, params)])
    plain_tiles = {k["index"]: plain.image.crop((16 * n, 0, 16 * (n + 1), 16)).tobytes()
                   for n, k in enumerate(plain.extra["kept"])}
    tiles = {k["index"]: result.image.crop((16 * n, 0, 16 * (n + 1), 16)) for n, k in enumerate(result.extra["kept"])}
    assert {j: t.tobytes() for j, t in tiles.items()} == plain_tiles  # the same four candidates, ranked anew
    pixels = torch.stack([torch.from_numpy(np.array(tiles[j])).permute(2, 0, 1).float() / 127.5 - 1 for j in range(4)])
    with torch.no_grad():
        expected = caption_score(judged.claims, pixels, parse_caption("a green square")).tolist()
    candidates = sorted(result.extra["candidates"], key=lambda c: c["index"])
    assert [c["claims_score"] for c in candidates] == pytest.approx(expected, abs=2e-3)
    rank = rank_scores([(c["clip_score"], c["claims_score"]) for c in candidates], 0.0)
    assert [k["index"] for k in result.extra["kept"]] == sorted(range(4), key=lambda j: (-rank[j], j))

    # a prompt outside the grammar: no claims scores, ranked exactly as the folder without a classifier
    (plain,) = _run(generator, [Request("a cat", 11, params)])
    (result,) = _run(judged, [Request("a cat", 11, params)])
    assert result.image.tobytes() == plain.image.tobytes() and result.extra == plain.extra


def test_the_clip_weight_beside_the_claims_is_the_folders_and_counts_in_its_digest(claims_folder, tmp_path):
    """A folder made before the weight was recorded sums the two scores, as it always did, and
    keeps its digest; a recorded weight is a setting of the model, so it changes the digest."""
    import json
    import shutil

    from studio_clip_gen import model_dir
    from studio_clip_gen.generator import rank_scores

    def variant(name: str, claims: dict) -> Path:
        root = tmp_path / name
        shutil.copytree(claims_folder, root)
        manifest = json.loads((root / "model.json").read_text())
        (root / "model.json").write_text(json.dumps({**manifest, "claims": claims}))
        return root

    digests, kept = {}, {}
    params = {**PARAMS, "candidates": 4, "keep": 4}
    for name, claims in {"before": {"file": "claims.safetensors"},
                         "summed": {"file": "claims.safetensors", "clip_weight": 1.0},
                         "alone": {"file": "claims.safetensors", "clip_weight": 0.0}}.items():
        generator = ClipGenGenerator(f"clip-gen/{name}", variant(name, claims))
        generator.load("cpu")
        digests[name] = generator.describe()["weights_sha256"]
        (result,) = _run(generator, [Request("a red circle above a blue square", 5, params)])
        candidates = sorted(result.extra["candidates"], key=lambda c: c["index"])
        weight = 1.0 if name != "alone" else 0.0
        rank = rank_scores([(c["clip_score"], c["claims_score"]) for c in candidates], weight)
        kept[name] = [k["index"] for k in result.extra["kept"]]
        assert kept[name] == sorted(range(4), key=lambda j: (-rank[j], j))
    assert kept["before"] == kept["summed"] and kept["alone"] != kept["before"]
    assert len(set(digests.values())) == 3
    # the digest a folder without the weight always had: the files' digests, nothing more
    manifest = model_dir.read_manifest(tmp_path / "before")
    files = [tmp_path / "before" / manifest["vqgan"], tmp_path / "before" / manifest["transformer"],
             model_dir.clip_path(tmp_path / "before", manifest["clip"]), tmp_path / "before" / "claims.safetensors"]
    inner = "".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    assert digests["before"] == hashlib.sha256(inner.encode()).hexdigest()

    for bad in (-1.0, "heavy", True, None, float("nan"), float("inf"), 10**400):
        broken = ClipGenGenerator("clip-gen/bad", variant(f"bad{len(digests)}-{id(bad)}",
                                                          {"file": "claims.safetensors", "clip_weight": bad}))
        with pytest.raises(GenerationError, match="clip_weight must be a finite number"):
            broken.load("cpu")


def test_a_claims_classifier_for_another_picture_size_is_refused(parts, tmp_path):
    from studio.ml.claims import ClaimsNet, save_claims_net
    from studio_clip_gen.checkpoints import WeightsError
    from studio_clip_gen.model_dir import assemble

    save_claims_net(ClaimsNet(image_size=16, ch=8), tmp_path / "claims16.safetensors")
    with pytest.raises(WeightsError, match="clip_weight must be a finite number"):  # refused before anything is written
        assemble(tmp_path / "model", vqgan=parts / "vqgan.safetensors", transformer=parts / "transformer.safetensors",
                 clip=parts / "clip.safetensors", clip_arch="studio-tiny-64", claims=tmp_path / "claims16.safetensors",
                 claims_clip_weight=float("nan"))
    assert not (tmp_path / "model").exists()
    save_claims_net(ClaimsNet(image_size=64, ch=8), tmp_path / "claims.safetensors")
    with pytest.raises(WeightsError, match="reads 64px pictures"):
        assemble(tmp_path / "model", vqgan=parts / "vqgan.safetensors", transformer=parts / "transformer.safetensors",
                 clip=parts / "clip.safetensors", clip_arch="studio-tiny-64", claims=tmp_path / "claims.safetensors")
