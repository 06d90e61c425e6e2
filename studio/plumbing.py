"""The small helpers every part of Studio needs, written once.

- :func:`atomic_path`, :func:`write_atomic`, :func:`atomic_dir`: write to a temporary name next
  to the target, then rename over it, so readers see either nothing or the whole thing. The
  result has the permissions a plain ``open()`` would give it (the umask's), not ``mkstemp``'s 0600.
- :func:`sha256_file`: the hex digest of a file, read in chunks; :func:`sha256_file_cached`: the
  same, remembered in the home keyed on the file's path, size and modification time.
- :func:`one_line`: the first line of an exception's text (or its type name), for one-line errors.
- :func:`visible`: text as a terminal may show it: control characters, terminal escapes, lone
  surrogates and bidirectional overrides spelled out (``\\x1b``, ``\\u202e``), never sent raw.
- :func:`load_checkpoint`: the one safe loader for torch/pickle checkpoint files
  (``torch.load(weights_only=True)``, every failure a one-line :class:`WeightsError`).
- :func:`hardware`: the machine a run or a benchmark ran on.
- :class:`TrainingRun`: a training run's folder: checkpoint and resume, training time carried
  across resumed legs, metrics as JSON lines.

Every command imports this module, so only the lightest of the standard library loads with it; the
rest (hashlib, tempfile, shutil, platform) and torch load inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from studio.errors import WeightsError

__all__ = [
    "WeightsError",
    "atomic_dir",
    "atomic_path",
    "check_finite",
    "collector_paused",
    "hardware",
    "import_paused",
    "load_checkpoint",
    "MetricsLog",
    "one_line",
    "sha256_file",
    "sha256_file_cached",
    "TrainingRun",
    "visible",
    "write_atomic",
]


# ---- atomic writes ---------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def _as_if_created(path: str | Path, directory: bool = False) -> None:
    """Give a temp file (0600) or folder (0700) the mode ``open()``/``mkdir()`` would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it is renamed over ``path`` if the block succeeds.

    For writers that want a file name (``torch.save``, ``safetensors``, ``PIL``); the block may
    write the path or leave it empty. On an exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _as_if_created(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_atomic(path: str | Path, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` (and what was there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        _as_if_created(tmp, directory=True)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ---- files and errors ------------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_file_cached(path: str | Path, cache: str | Path | None = None) -> str:
    """:func:`sha256_file`, remembered in the JSON file ``cache`` (``studio.api`` passes
    ``<home>/cache/sha256.json``) keyed on the resolved path, size and modification time
    (nanoseconds), so loading a model does not read its weights twice.

    A file rewritten in place keeps neither its size and mtime both, except by design (the usual
    make/git trade-off); `studio doctor` still hashes the files in full. Without a cache file the
    digest is computed and not remembered.
    """
    path = Path(path)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if cache is None:
        return sha256_file(path)
    store = Path(cache)
    try:
        known = json.loads(store.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    digest = known.get(key)
    if isinstance(digest, str) and len(digest) == 64:
        return digest
    digest = sha256_file(path)
    known = {k: v for k, v in known.items() if not k.startswith(f"{path.resolve()}|")}
    known[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(store, json.dumps(known, indent=0, sort_keys=True))
    except OSError:
        pass
    return digest


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes, the same for the same tensors and metadata in every process.

    ``safetensors`` writes its ``__metadata__`` from a hash map, so the key order of the header
    (and the file's sha256) changes from one run to the next. The header is written again here
    as JSON with sorted keys (padded with spaces to 8 bytes, as the format asks); the data
    section is left exactly as safetensors wrote it.
    """
    import struct

    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


def save_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors atomically and byte-reproducibly (:func:`safetensors_bytes`)."""
    return write_atomic(path, safetensors_bytes(tensors, metadata))


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of ``exc``'s text, or its type name when it has none."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    return text[:limit] if limit else text


#: Format characters that reorder text on screen (bidirectional embeddings, overrides, isolates,
#: marks): shown escaped so a prompt cannot make the text around it read differently.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _spelled(char: str) -> str:
    code = ord(char)
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: object) -> str:
    """``value`` as text that is safe to put on a terminal and reads as what it holds.

    Control characters (C0, DEL, C1: ESC, BEL, OSC and CSI introducers...), line and paragraph
    separators, lone surrogates (undecodable bytes from argv or a file name) and bidirectional
    controls become backslash escapes; everything else, right-to-left scripts included, stays.
    The result is one line. It is plain text: rich markup still needs escaping on top.
    """
    import unicodedata

    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or (char not in _BIDI_CONTROLS
                                  and unicodedata.category(char) not in ("Cc", "Cs", "Zl", "Zp")):
            out.append(char)
        else:
            out.append(_spelled(char))
    return "".join(out)


# ---- checkpoint files ------------------------------------------------------------------------


def restore_optimizer(optimizer: Any, state: dict, lr: float) -> None:
    """Load a saved optimizer ``state`` (Adam's moments and step counts), training on at ``lr``
    (every parameter group).

    ``load_state_dict`` also brings back the learning rates the state was saved with, so a run
    resumed with another rate would silently keep the old one. Here the resumed run's own rate
    (the one its command line gives, default included) is the one it trains and records.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr


def load_checkpoint(path: str | Path, *, missing_ok: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; every failure is a one-line :class:`WeightsError`.

    The one way Studio reads torch/pickle checkpoint files: tensors and plain containers are
    rebuilt, anything else in the pickle is refused before it runs. ``missing_ok``: a missing
    file gives None (a run that has no checkpoint yet).
    """
    import pickle
    import re

    import torch

    path = Path(path)
    if not path.is_file():
        if missing_ok and not path.exists():
            return None
        raise WeightsError(f"{path}: no such file")
    if _is_torchscript(path):  # torch.load would hand it to torch.jit.load, which compiles its code
        raise WeightsError(f"{path}: a TorchScript archive (code, not a checkpoint); refused, nothing was loaded")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _looks_like_pickle(path):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            what = f" ({found.group(1)})" if found else ""
            raise WeightsError(
                f"{path}: holds Python objects besides tensors (a pickle payload{what}); refused, nothing was executed"
            ) from None
        raise WeightsError(f"{path}: not a checkpoint (neither a torch file, a pickle nor safetensors)") from None
    except Exception as exc:  # noqa: BLE001 - the unpickler fails in many ways on arbitrary bytes
        raise WeightsError(f"{path}: not a checkpoint or truncated ({one_line(exc, 200)})") from None


def check_finite(tensors: Any, what: str | Path) -> None:
    """Refuse weights holding NaN or infinity (a :class:`WeightsError` naming the first such tensor).

    ``tensors``: a ``{name: tensor}`` dict (nested dicts are walked). Checked when weights are
    imported or loaded, so a broken file is refused there with one line, not at generation.
    """
    import torch

    def walk(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(value, dict):
            for key, item in value.items():
                yield from walk(f"{prefix}{key}." if not isinstance(item, torch.Tensor) else f"{prefix}{key}", item)
        elif isinstance(value, torch.Tensor):
            yield prefix.rstrip("."), value

    for name, tensor in walk("", tensors):
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise WeightsError(f"{what}: tensor {name!r} holds {bad} NaN or infinite value{'s' if bad != 1 else ''}; "
                                   f"refused (the weights are broken)")


def _is_torchscript(path: Path) -> bool:
    """A zip archive with TorchScript code in it (``code/__torch__/...``, ``constants.pkl``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _looks_like_pickle(path: Path) -> bool:
    """A torch zip archive or a raw pickle (protocol >= 2 starts with the PROTO opcode)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


# ---- hardware --------------------------------------------------------------------------------


def cuda_device_problem(device: str) -> str | None:
    """Why ``device`` (``cuda`` or ``cuda:N``) cannot be used on this machine, or None when it can.

    The one check behind STUDIO_DEVICE and every trainer's ``--device``, which add their own
    prefix; torch is imported here, lazily.
    """
    import torch

    if not torch.cuda.is_available():
        return "this machine has no usable CUDA device (torch.cuda.is_available() is False)"
    index = torch.device(device).index or 0
    count = torch.cuda.device_count()
    if index >= count:
        return f"this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
    return None


def _cpuinfo_field(name: str, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The value of the first ``name`` line of ``cpuinfo`` (Linux), or None where there is none."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The instruction-set flags of this machine's CPU, or None where the system does not list them.

    Read from the first ``flags`` line of ``cpuinfo``; None means "unknown", which callers must
    not mistake for "none".
    """
    flags = _cpuinfo_field("flags", cpuinfo)
    return None if flags is None else frozenset(flags.split())


def hardware() -> dict[str, Any]:
    """The machine: cpu model, cores, python; with torch loaded also its version, threads, device."""
    import platform

    cpu = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    info: dict[str, Any] = {"cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(),
                            "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return info


# ---- training runs ---------------------------------------------------------------------------


class MetricsLog:
    """Append-only JSON lines (one object per logged step), flushed per line so a killed run keeps its log.

    Floats are rounded to 6 digits; ``last`` is the last record written (at first, the last one
    an earlier leg of a resumed run left in the file); ``echo`` (optional) sees every record (a
    progress display, or ``--json`` lines for machines).
    """

    def __init__(self, path: str | Path, echo: Callable[[dict], None] | None = None) -> None:
        self.path, self.echo, self.last = Path(path), echo, {}
        try:
            lines = self.path.read_text().splitlines()
            self.last = json.loads(lines[-1]) if lines else {}
        except (OSError, ValueError):
            self.last = {}
        if not isinstance(self.last, dict):
            self.last = {}

    def write(self, record: dict) -> dict:
        record = append_jsonl(self.path, record, digits=6)
        self.last = record
        if self.echo is not None:
            self.echo(record)
        return record


class TrainingRun:
    """A training run's folder: ``checkpoint.pt`` (resumable), ``metrics.jsonl``, training time.

    The time a run has trained is carried across resumed legs: a checkpoint written through
    :meth:`save` stores ``train_seconds`` (earlier legs plus this one), and :meth:`resume`
    reads it back, so a model card states the whole run's time.
    """

    def __init__(self, folder: str | Path, *, checkpoint: str = "checkpoint.pt", metrics: str = "metrics.jsonl",
                 echo: Callable[[dict], None] | None = None) -> None:
        self.folder = Path(folder)
        self.checkpoint_path = self.folder / checkpoint
        self.metrics = MetricsLog(self.folder / metrics, echo)
        self.prior_seconds = 0.0
        self.started = time.monotonic()

    def resume(self) -> dict | None:
        """The last checkpoint (None when there is none); its training time counts from now on."""
        state = load_checkpoint(self.checkpoint_path, missing_ok=True)
        self.prior_seconds = float(state.get("train_seconds", 0.0)) if isinstance(state, dict) else 0.0
        return state

    @property
    def leg_seconds(self) -> float:
        """Seconds since this leg started."""
        return time.monotonic() - self.started

    @property
    def train_seconds(self) -> float:
        """Seconds trained in all legs so far, this one included."""
        return self.prior_seconds + self.leg_seconds

    def save(self, state: dict) -> None:
        """Write a checkpoint atomically, with the run's training time so far."""
        save_checkpoint({**state, "train_seconds": self.train_seconds}, self.checkpoint_path)

    def log(self, record: dict) -> dict:
        """Append one record to ``metrics.jsonl`` (see :class:`MetricsLog`)."""
        return self.metrics.write(record)


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically; read back with :func:`load_checkpoint`."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_jsonl(path: str | Path, record: dict, digits: int | None = None) -> dict:
    """Append one JSON line (floats rounded to ``digits`` when given); returns the record as written."""
    if digits is not None:
        record = {k: (round(v, digits) if isinstance(v, float) else v) for k, v in record.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record


# ---- garbage collection around heavy imports -----------------------------------------------------

_collector_lock = threading.Lock()
_collector_holds = 0
_collector_was_enabled = True
_collector_frozen = False  # set once, after the first model of this process loaded
_collector_freeze_asked = False
_collector_import_freeze_asked = False


@contextlib.contextmanager
def collector_paused(*, freeze: bool = False, _fresh_import: bool = False) -> Iterator[None]:
    """Python's cycle collector off while heavy imports run or a model loads.

    Importing torch and open_clip creates about a million long-lived objects, and the collector
    walks all of them again in each full pass it starts while they are made: six passes, 0.6 s of
    a cold `studio submit` on a 2-core machine, and one more right after, once it is back on.
    None of those objects is garbage. So after the first model of a process has loaded
    (``freeze``, which only a successful load asks for) everything alive is moved out of the
    collector's reach (``gc.freeze``), which also keeps every later pass in a long-lived worker
    cheap. That happens once: freezing later could keep a failed job's garbage (a traceback
    holding tensors) for the life of the worker; a later successful load asks again if a failure
    cancelled it. Nested and concurrent pauses (threads loading two models) switch the collector
    back on when the last one ends. Besides that one freeze after the first model,
    :func:`import_paused` asks for one after a library's first import; a pause that ends in an
    error cancels a freeze still waiting, so a failure's garbage is never frozen.
    """
    import gc

    global _collector_holds, _collector_was_enabled, _collector_frozen, _collector_freeze_asked
    global _collector_import_freeze_asked
    with _collector_lock:
        if _collector_holds == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_holds += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        with _collector_lock:
            _collector_holds -= 1
            # a pause ending in an error cancels any freeze still waiting: its garbage is alive now
            _collector_freeze_asked = (_collector_freeze_asked or freeze) and ok
            _collector_import_freeze_asked = (_collector_import_freeze_asked or _fresh_import) and ok
            if _collector_holds == 0:
                if _collector_freeze_asked and not _collector_frozen:
                    gc.freeze()
                    _collector_frozen = True
                elif _collector_import_freeze_asked:
                    gc.freeze()  # before the collector is back on: its first pass would walk them all
                _collector_import_freeze_asked = False
                if _collector_was_enabled:
                    gc.enable()


def import_paused(name: str) -> ModuleType:
    """Import a large library (torch) with the collector paused; a first import freezes what is alive.

    Without the freeze, the first young-generation pass after the pause walks every object the
    import made (about a million for torch): 0.1-0.2 s of a cold `studio submit`, twice (the pass
    and the next older one). ``gc.freeze`` moves everything alive out of the collector's reach,
    not only the library's objects; Studio imports torch this way before any job of the process
    has run, so no job's garbage is there to be kept. The freeze waits for the last pause of the
    process to end and is dropped if any pause ends in an error (see :func:`collector_paused`).
    """
    if name in sys.modules:  # imported, or being imported by another thread: import_module waits for it
        return importlib.import_module(name)
    with collector_paused(_fresh_import=True):
        return importlib.import_module(name)


def _collector_after_fork() -> None:
    """A child forked while another thread held a pause must not inherit the collector off."""
    import gc

    global _collector_lock, _collector_holds, _collector_freeze_asked, _collector_import_freeze_asked
    _collector_lock = threading.Lock()
    _collector_freeze_asked = _collector_import_freeze_asked = False  # asked for by the parent's pauses
    if _collector_holds:
        _collector_holds = 0
        if _collector_was_enabled:
            gc.enable()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_collector_after_fork)


_last_id = (0, 0)  # (milliseconds, 80-bit random part) of the id made last in this process
_id_lock = threading.Lock()


def new_id() -> str:
    """A new job or image id: a ULID (48 bits of milliseconds, then 80 random bits), so ids sort by
    creation time and the queue, which takes equal priorities in id order, is first in, first out.

    Within one millisecond python-ulid adds one to the last id, so the images of one job would
    share 25 of 26 characters and no short prefix could tell them apart. Here a later id in the
    same millisecond raises the top 20 random bits (the 4 characters after the time, which end a
    14-character short id) by a random step and draws the rest afresh: ids stay in order and their
    short ids differ. The rare overflow moves on to the next millisecond.
    """
    global _last_id
    with _id_lock:
        millis = time.time_ns() // 1_000_000
        last_millis, last_random = _last_id
        if millis <= last_millis:
            top = (last_random >> 60) + 1 + int.from_bytes(os.urandom(2), "big") % 1024
            millis = last_millis
            if top >= 1 << 20:
                millis, top = last_millis + 1, int.from_bytes(os.urandom(3), "big") >> 4
            rest = int.from_bytes(os.urandom(8), "big") >> 4
            random_part = (top << 60) | rest
        else:
            random_part = int.from_bytes(os.urandom(10), "big")
        _last_id = (millis, random_part)
    from ulid import ULID

    return str(ULID.from_bytes(millis.to_bytes(6, "big") + random_part.to_bytes(10, "big")))
