"""The test-only plugins, installed for the test run and nowhere else (see tests/plugin_env.py).

The test plugin (``tests/plugin``) and the example plugin (``examples/studio-example``) are
found through real entry points, as any installed plugin is, but never enter the user's
environment: a plain ``studio plugins`` after the tests sees only what the user installed.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("studio_plugin_env", Path(__file__).parent / "tests" / "plugin_env.py")
plugin_env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin_env)
plugin_env.activate()
