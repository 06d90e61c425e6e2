"""A plugin whose import fails: the others must keep working."""

raise ImportError("broken-import is broken on purpose")
