"""The gallery: browse, search, re-generate, export and import what was made.

Submodules are imported on demand: ``query`` (pages and filters), ``search`` (prompt text
search per database), ``lineage``, ``thumbs`` (half-block thumbnails), ``actions`` (regen,
variations, verify, delete), ``transfer`` (export and import), ``app`` (the Textual browser,
the only module that imports Textual) and ``commands`` (the click commands).
"""
