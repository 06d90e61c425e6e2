"""One real run of `studio gallery` in a terminal (tmux), read back as a person would see it.

Skips when tmux is not installed (CI images need `apt-get install -y tmux`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install -y tmux)")


def tmux(*args, check=True):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check)


def test_gallery_in_a_real_terminal(make, studio_home, tmp_path):
    make("a red circle", count=3, seed=1, size=16)
    make("a blue square", count=2, seed=5, size=16)
    studio = Path(sys.executable).with_name("studio")
    command = str(studio) if studio.exists() else f"{sys.executable} -m studio"
    session = f"studio-test-{uuid.uuid4().hex[:8]}"
    env = {"STUDIO_HOME": str(studio_home), "STUDIO_LOAD_PLUGINS": "testgen", "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    socket = ["-L", session]  # a private tmux server: nothing of the user's is touched
    tmux(*socket, "new-session", "-d", "-s", session, "-x", "120", "-y", "40", "-c", str(tmp_path), f"env -u COLUMNS -u LINES {exports} {command} gallery")
    try:
        target = session
        text = wait_for_sock(socket, target, lambda t: "5 entries" in t and "a blue square" in t and "regen" in t)
        assert "5 entries" in text and "\u2580" in text, text  # the status line and half-block pixels
        assert "\x1b[38;2;220;40;40" in text or "38;2;2" in text  # true-colour foreground codes
        plain = tmux(*socket, "capture-pane", "-p", "-t", target).stdout
        assert "a red circle" in plain and "a blue square" in plain
        for _attempt in range(5):  # focus the search field, then type, as a person would
            tmux(*socket, "send-keys", "-t", target, "/")  # (a key sent while the app starts can be lost)
            focused = lambda t: "search" in t.splitlines()[-1] + t.splitlines()[-2] and "regen" not in t  # noqa: E731
            if focused(wait_for_plain(socket, target, focused, timeout=3)):
                break  # the grid's keys left the footer: the search field has the focus
        tmux(*socket, "send-keys", "-t", target, "blue", "Enter")
        plain = wait_for_plain(socket, target, lambda t: "2 entries" in t)
        assert "2 entries" in plain and "a red circle" not in plain, plain
        tmux(*socket, "send-keys", "-t", target, "Enter")
        plain = wait_for_plain(socket, target, lambda t: "recipe" in t)
        assert "recipe" in plain and "lineage" in plain and "weights_sha256" in plain
        tmux(*socket, "send-keys", "-t", target, "Escape")  # alone: Escape then q at once reads as Alt+q
        wait_for_plain(socket, target, lambda t: "recipe" not in t and "regen" in t)
        tmux(*socket, "send-keys", "-t", target, "q")
        deadline = time.monotonic() + 15
        while tmux(*socket, "has-session", "-t", target, check=False).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert tmux(*socket, "has-session", "-t", target, check=False).returncode != 0, "q did not quit"
    finally:
        tmux(*socket, "kill-server", check=False)


def wait_for_sock(socket, target, predicate, timeout=30.0, escapes=True):
    deadline = time.monotonic() + timeout
    args = ["capture-pane", "-p", *(["-e"] if escapes else []), "-t", target]
    while True:
        text = tmux(*socket, *args).stdout
        if predicate(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def wait_for_plain(socket, target, predicate, timeout=30.0):
    return wait_for_sock(socket, target, predicate, timeout, escapes=False)


def test_log_lines_never_appear_on_the_gallery_screen(make, studio_home, tmp_path):
    """A regenerate from the gallery runs a job whose finish event reaches a plugin that fails
    (broken-register's listener raises): the warning is held while the gallery owns the screen
    and printed once it is closed."""
    make("a red circle", count=1, seed=1, size=16)
    studio = Path(sys.executable).with_name("studio")
    command = str(studio) if studio.exists() else f"{sys.executable} -m studio"
    session = f"studio-test-{uuid.uuid4().hex[:8]}"
    env = {"STUDIO_HOME": str(studio_home), "STUDIO_LOAD_PLUGINS": "testgen,broken-register", "TERM": "xterm-256color"}
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    socket = ["-L", session]
    tmux(*socket, "new-session", "-d", "-s", session, "-x", "120", "-y", "40", "-c", str(tmp_path),
         f"env -u COLUMNS -u LINES {exports} {command} gallery; sleep 60")
    try:
        plain = wait_for_plain(socket, session, lambda t: "1 entry" in t and "regen" in t)
        assert "1 entry" in plain, plain
        tmux(*socket, "send-keys", "-t", session, "r")
        plain = wait_for_plain(socket, session, lambda t: "2 entries" in t)
        assert "2 entries" in plain, plain
        for _ in range(5):  # a few looks while it runs: the warning never lands on the live screen
            time.sleep(0.3)
            screen = tmux(*socket, "capture-pane", "-p", "-t", session).stdout
            assert "listeners that fail" not in screen and "Traceback" not in screen, screen
        tmux(*socket, "send-keys", "-t", session, "q")
        after = wait_for_plain(socket, session, lambda t: "listeners that fail" in t)
        assert "listeners that fail" in after, after  # told once the screen is the user's again
    finally:
        tmux(*socket, "kill-server", check=False)
