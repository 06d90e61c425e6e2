"""One settings object, read from the environment (and an optional config file).

Everything that varies between machines lives here so that the rest of the code never
reads ``os.environ`` itself. Standard library only: this module is imported by the CLI
before anything heavy.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from studio.errors import ConfigError
from studio.plumbing import one_line

DEVICES = ("auto", "cpu", "cuda")




def _default_home() -> Path:
    try:
        import platformdirs

        return Path(platformdirs.user_data_dir("studio", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path.home() / ".local" / "share" / "studio"


@dataclass(frozen=True)
class Settings:
    """The effective settings. ``source`` says where each value came from, for `studio config`."""

    home: Path
    database_url: str
    broker_url: str | None
    device: str
    load_plugins: tuple[str, ...] | None  # None: every installed plugin
    max_attempts: int
    default_model: str | None = None  # the model of `studio submit` without --model
    source: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["home"] = str(self.home)
        data.pop("source")
        if data["load_plugins"] is not None:
            data["load_plugins"] = list(data["load_plugins"])
        return data

    def database_missing(self) -> bool:
        """Whether the database is a SQLite file that does not exist yet (so it holds no jobs).

        Lets read-only commands answer "nothing yet" on a fresh home without loading the
        database layer; the file is created, and migrated, by the first command that writes.
        """
        url = self.database_url
        for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
            if url.startswith(prefix):
                path = url[len(prefix):].split("?", 1)[0]
                return bool(path) and path != ":memory:" and not Path(path).exists()
        return False

    def ensure_home(self) -> Path:
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use the studio home {self.home}: {exc.strerror or exc} "
                              f"({exc.filename or self.images_dir}); check STUDIO_HOME and its permissions") from None
        return self.home

    def resolve_device(self) -> str:
        """Turn ``auto`` into a concrete device; only here is torch consulted (lazily).

        A CUDA device this machine does not have is a :class:`ConfigError` here, before any
        job is stored, rather than a failure of every job later.
        """
        if self.device == "cpu":
            return self.device
        from studio.plumbing import import_paused

        try:
            torch = import_paused("torch")
        except ImportError:
            if self.device == "auto":
                return "cpu"
            raise ConfigError(f"STUDIO_DEVICE={self.device}, but torch is not installed") from None
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        from studio.plumbing import cuda_device_problem

        problem = cuda_device_problem(self.device)
        if problem is not None:
            raise ConfigError(f"STUDIO_DEVICE={self.device}, but {problem}; use cpu or auto")
        return self.device


#: The keys ``config.json`` may hold (the settings' names in lower case).
CONFIG_KEYS = ("database_url", "broker_url", "device", "max_attempts", "default_model")


def _read_config_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read config file {path}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    for key in data:
        if key not in CONFIG_KEYS:
            import difflib

            close = difflib.get_close_matches(str(key).lower(), CONFIG_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(CONFIG_KEYS)})"
            logging.getLogger("studio.config").warning("%s: unknown key %r is ignored%s", path, key, hint)
    return {str(k): str(v) for k, v in data.items() if v is not None and k in CONFIG_KEYS}


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read settings: environment variables win over ``<home>/config.json``, which wins over defaults."""
    env = dict(os.environ if env is None else env)
    source: dict[str, str] = {}

    if env.get("STUDIO_HOME"):
        home = Path(env["STUDIO_HOME"]).expanduser()
        source["home"] = "env STUDIO_HOME"
    else:
        home = _default_home()
        source["home"] = "default"
    home = home.absolute()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"the studio home {home} (STUDIO_HOME) is a file, not a folder; point STUDIO_HOME at a folder")
    file_values = _read_config_file(home / "config.json")

    def pick(key: str, env_name: str, default: str | None) -> str | None:
        if env.get(env_name) not in (None, ""):
            source[key] = f"env {env_name}"
            return env[env_name]
        if key in file_values:
            source[key] = "config.json"
            return file_values[key]
        source[key] = "default"
        return default

    database_url = pick("database_url", "STUDIO_DATABASE_URL", f"sqlite:///{home / 'studio.db'}")
    broker_url = pick("broker_url", "STUDIO_BROKER_URL", None)
    device = (pick("device", "STUDIO_DEVICE", "auto") or "auto").strip().lower()
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit() and device[5:].isascii()):
        raise ConfigError(f"STUDIO_DEVICE must be one of {', '.join(DEVICES)} or cuda:N (N a number), got {device!r}")
    attempts_raw = pick("max_attempts", "STUDIO_MAX_ATTEMPTS", "3")
    try:
        max_attempts = int(attempts_raw or "3")
        if max_attempts < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"STUDIO_MAX_ATTEMPTS must be a positive integer, got {attempts_raw!r}") from None

    default_model = (pick("default_model", "STUDIO_DEFAULT_MODEL", None) or "").strip() or None

    if "STUDIO_LOAD_PLUGINS" in env:
        raw = env["STUDIO_LOAD_PLUGINS"]
        load_plugins: tuple[str, ...] | None = tuple(p.strip() for p in raw.split(",") if p.strip())
        source["load_plugins"] = "env STUDIO_LOAD_PLUGINS"
    else:
        load_plugins = None
        source["load_plugins"] = "default"

    return Settings(
        home=home,
        database_url=database_url or "",
        broker_url=broker_url,
        device=device,
        load_plugins=load_plugins,
        max_attempts=max_attempts,
        default_model=default_model,
        source=source,
    )


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and `studio config`."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))
