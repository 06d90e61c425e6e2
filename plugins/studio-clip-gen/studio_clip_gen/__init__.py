"""CLIP-GEN for Studio: a taming-compatible VQGAN and a transformer conditioned on CLIP embeddings,
trained on images alone and prompted with text (Wang et al., 2022, arXiv 2203.00386).

Modules: ``vqgan`` (stage 1), ``gpt`` (stage 2 and sampling), ``checkpoints`` (safe reading and
layout mapping), ``train`` (both trainers), ``generator`` and ``plugin`` (the Studio side).
Nothing heavy is imported here.
"""
