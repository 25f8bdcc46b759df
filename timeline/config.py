"""Read the environment once, at start-up, and refuse bad values with one clear line.

Every setting an operator may turn is read here, so a typo in a deployment stops the process
before it serves anything, with a message naming the variable, instead of failing later in a
request. The error is a ``SystemExit``: Python prints its message as one line and exits 1,
which is what a process manager or a person at a terminal wants to see.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(SystemExit):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"configuration error: {name} {problem}")


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(name, f"must be {bounds}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"must be true or false (1/0, yes/no, on/off), got {raw!r}")


def env_token(name: str, *, min_length: int = 16) -> str:
    """A secret shared with another program (empty: none): printable ASCII without spaces."""
    raw = os.environ.get(name, "").strip()
    if raw and not (raw.isascii() and raw.isprintable() and " " not in raw):
        raise ConfigError(name, "must be printable ASCII without spaces")
    if raw and len(raw) < min_length:
        raise ConfigError(name, f"must be at least {min_length} characters, got {len(raw)}")
    return raw


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    path = Path(raw)
    if not path.is_absolute():
        raise ConfigError(name, f"must be an absolute path, got {raw!r}")
    return path


def env_redis_url(name: str, default: str) -> str:
    raw = os.environ.get(name, "").strip() or default
    parts = urlsplit(raw)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(name, f"must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    if parts.scheme != "unix":
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(name, f"has a bad port: {raw!r}") from None
        if not parts.hostname:
            raise ConfigError(name, f"names no host: {raw!r}")
    elif not parts.path:
        raise ConfigError(name, f"names no socket path: {raw!r}")
    return raw


def env_database(name: str, default_sqlite_path: Path) -> dict:
    import dj_database_url

    raw = os.environ.get(name, "").strip()
    if raw == "":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(default_sqlite_path)}
    try:
        return dj_database_url.parse(raw)
    except Exception as exc:  # the library raises several types for one mistake
        raise ConfigError(name, f"is not a database URL we can use ({exc})") from None


def secret_key(var_dir: Path) -> str:
    """DJANGO_SECRET_KEY, or for local use a key generated once into var/."""
    raw = os.environ.get("DJANGO_SECRET_KEY", "").strip()
    if raw:
        if len(raw) < 32:
            raise ConfigError("DJANGO_SECRET_KEY", "must be at least 32 characters long")
        return raw
    path = var_dir / "secret_key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        # Written whole to a private file, then linked into place: when several processes
        # start at once, exactly one link succeeds and all of them read the same key.
        tmp = var_dir / f".secret_key.{os.getpid()}"
        tmp.write_text(secrets.token_urlsafe(50))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
