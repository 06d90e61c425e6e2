"""Shared torch code: CLIP configurations and loading, datasets, training and evaluation.

Imported lazily (never when the CLI starts) because it pulls in torch and open_clip.
"""
