"""Daemon settings: one frozen `Settings`, resolved as flags > `METER_*` environment > TOML file >
defaults. Every problem is a `ConfigError` naming the flag, variable or key; the broker password
is never part of a repr or a log line.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from meter.errors import ConfigError
from rating.contracts import parse_duration

__all__ = [
    "DEFAULT_METRICS_ADDR",
    "ENV_PREFIX",
    "BrokerAddress",
    "Settings",
    "load_settings",
    "parse_broker_url",
    "parse_host_port",
    "parse_seconds",
]

ENV_PREFIX: Final = "METER_"
DEFAULT_METRICS_ADDR: Final = ("127.0.0.1", 9464)
#: MQTT v5 session expiry meaning "never" (the broker keeps the meter's queue however long it is down).
SESSION_NEVER: Final = 0xFFFFFFFF

TrackerClock = Literal["wall", "events"]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is: `tls` is True for mqtts://."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        """The address as a URL (no credentials: those never go in URLs here)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `meter serve` needs, resolved once at startup. Durations are seconds (float)."""

    broker: BrokerAddress
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str = "license-meter"
    topic_prefix: str = "meter"
    metrics_addr: tuple[str, int] = DEFAULT_METRICS_ADDR
    db: Path = Path("meter.db")
    contracts: Path | None = None
    synchronous: str = "FULL"
    batch_max: int = 1000
    batch_wait: float = 0.005
    #: Unacknowledged messages the broker may have in flight to us (MQTT 5 Receive Maximum).
    receive_maximum: int = 4000
    max_future: float = 300.0
    max_bytes: int = 8 * 1024
    keepalive: int = 15
    session_expiry: int = SESSION_NEVER
    reconnect_min: float = 0.2
    reconnect_max: float = 30.0
    #: "wall": the tracker's now is max(wall clock, latest event time); "events": latest event time
    #: only, for replays of historic data at high speed.
    tracker_clock: TrackerClock = "wall"
    #: The gauges show the state this long ago, so events that arrive up to this much out of
    #: order are still applied in event-time order (a watermark).
    reorder_window: float = 2.0
    #: Longest a SIGTERM drain may take before the daemon gives up on in-flight work (exit < 5 s).
    shutdown_timeout: float = 3.0
    #: A period is finalized (`meter report --finalize`) this long after it ends; 0 turns it off.
    finalize_after: float = 3600.0
    log_level: str = "INFO"
    #: TLS for /metrics (PEM; the key may sit in the certificate file) and basic auth.
    metrics_cert_file: Path | None = None
    metrics_key_file: Path | None = None
    metrics_username: str | None = None
    metrics_password: str | None = field(default=None, repr=False)

    @property
    def subscription(self) -> str:
        """The topic filter the meter subscribes to."""
        return f"{self.topic_prefix}/+/events"

    def describe(self) -> str:
        """One log line of the settings that matter, never the password."""
        return (f"broker={self.broker.url} client_id={self.client_id} user={self.username or '-'} "
                f"subscription={self.subscription} db={self.db} contracts={self.contracts or '-'} "
                f"metrics={'https' if self.metrics_cert_file else 'http'}://"
                f"{self.metrics_addr[0]}:{self.metrics_addr[1]}/metrics "
                f"{'(basic auth) ' if self.metrics_username else ''}"
                f"batch={self.batch_max}/{self.batch_wait * 1000:g}ms "
                f"tracker_clock={self.tracker_clock}")


# --- value parsers (each raises ValueError with a short reason) ----------------------------------

_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_seconds(value: object) -> float:
    """A duration: a number of seconds, or a string like "5ms", "1.5s", "5m", "12h"."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '5ms' or '30s', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    match = _SECONDS.match(value.strip()) if isinstance(value, str) else None
    if match:
        return float(match.group(1)) * _UNIT[match.group(2)]
    try:
        # Compound durations as in the contracts file ("1h30m"): one syntax everywhere.
        return parse_duration(value).total_seconds()  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(f"expected a duration like '5ms', '30s', '5m' or '1h30m', got {value!r}") from None


def parse_broker_url(text: str) -> BrokerAddress:
    """`mqtt://HOST[:PORT]` (default 1883) or `mqtts://HOST[:PORT]` (default 8883)."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {text!r}")
    if parts.username or parts.password:
        # Credentials in a URL end up in process lists, shell history and logs.
        raise ValueError("put credentials in username / password_file, not in the broker URL")
    if not parts.hostname:
        raise ValueError(f"no host in {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"unexpected path or query in {text!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls)


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) or just `PORT` (bound to 127.0.0.1)."""
    text = text.strip()
    if text.isdigit():
        host, port_text = DEFAULT_METRICS_ADDR[0], text
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        host = host.strip("[]")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port 0-65535 in {text!r}")
    return host, int(port_text)


def _positive_int(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _path(value: object) -> Path:
    return Path(_text(value))


def _topic_prefix(value: object) -> str:
    text = _text(value).strip("/")
    if not text or any(c in text for c in "+#") or "//" in text:
        raise ValueError(f"a topic prefix has no wildcards or empty levels, got {value!r}")
    return text


def _client_id(value: object) -> str:
    text = _text(value)
    if len(text.encode()) > 65535:
        raise ValueError("client id is too long")
    return text


def _choice(*allowed: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value)
        if text.lower() not in allowed and text.upper() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {value!r}")
        return text.lower() if text.lower() in allowed else text.upper()
    return parse


def _session_expiry(value: object) -> int:
    if isinstance(value, str) and value.strip().lower() == "never":
        return SESSION_NEVER
    seconds = int(parse_seconds(value))
    if seconds < 1:
        raise ValueError("must be at least 1s (0 would drop the queue on every disconnect)")
    return min(seconds, SESSION_NEVER)


#: Settings key -> parser. The key is also the TOML key, `--flag-name` and `METER_KEY`.
_PARSERS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "broker": lambda v: parse_broker_url(_text(v)),
    "username": _text,
    "password": _text,
    "password_file": _path,
    "ca_file": _path,
    "cert_file": _path,
    "key_file": _path,
    "client_id": _client_id,
    "topic_prefix": _topic_prefix,
    "metrics_addr": lambda v: parse_host_port(_text(v)),
    "db": _path,
    "contracts": _path,
    "synchronous": _choice("OFF", "NORMAL", "FULL", "EXTRA"),
    "batch_max": _positive_int,
    "batch_wait": parse_seconds,
    "receive_maximum": _positive_int,
    "max_future": parse_seconds,
    "max_bytes": _positive_int,
    "keepalive": _positive_int,
    "session_expiry": _session_expiry,
    "reconnect_min": parse_seconds,
    "reconnect_max": parse_seconds,
    "tracker_clock": _choice("wall", "events"),
    "reorder_window": parse_seconds,
    "shutdown_timeout": parse_seconds,
    "finalize_after": parse_seconds,
    "log_level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
    "metrics_cert_file": _path,
    "metrics_key_file": _path,
    "metrics_username": _text,
    "metrics_password_file": _path,
}

#: Extra environment names accepted for a key (the names operators reach for first).
_ENV_ALIASES: Final[Mapping[str, tuple[str, ...]]] = {
    "broker": ("METER_BROKER_URL",),
    "username": ("METER_BROKER_USERNAME",),
    "password": ("METER_BROKER_PASSWORD",),
    "password_file": ("METER_BROKER_PASSWORD_FILE",),
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read settings: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # Allow the keys either at the top level or under [serve].
    table = doc.get("serve", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: key 'serve': expected a table")
    unknown = sorted(k for k in table if k not in _PARSERS and k != "serve")
    if unknown:
        raise ConfigError(f"{path}: key {unknown[0]!r}: unknown setting "
                          f"(known: {', '.join(sorted(_PARSERS))})")
    return {k: v for k, v in table.items() if k in _PARSERS}


def load_settings(flags: Mapping[str, object] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings: `flags` (keys as in `Settings`, None = not given) > `environ` > the TOML
    file named by `flags["config"]` or `METER_CONFIG` > defaults. Reads the config and password
    files; raises `ConfigError` naming the source of a bad value."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = environ if environ is not None else {}

    config_path = flags.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    layers: list[tuple[str, Mapping[str, object]]] = []
    if config_path:
        path = Path(str(config_path))
        layers.append((f"{path}: key", _read_toml(path)))
    env_values: dict[str, object] = {}
    env_names: dict[str, str] = {}
    for key in _PARSERS:
        for name in (ENV_PREFIX + key.upper(), *_ENV_ALIASES.get(key, ())):
            if name in environ and environ[name] != "":
                env_values[key], env_names[key] = environ[name], name
                break
    layers.append(("environment", env_values))
    unknown_flags = sorted(k for k in flags if k not in _PARSERS)
    if unknown_flags:
        raise ConfigError(f"unknown setting {unknown_flags[0]!r}")
    layers.append(("flag", flags))

    resolved: dict[str, Any] = {}
    for source, values in layers:  # lowest precedence first; later layers win
        for key, raw in values.items():
            try:
                resolved[key] = _PARSERS[key](raw)
            except ValueError as exc:
                where = (f"{source} {key!r}" if source.endswith("key") else
                         f"{env_names[key]}" if source == "environment" else _flag(key))
                raise ConfigError(f"{where}: {exc}") from None

    if "broker" not in resolved:
        raise ConfigError("no broker: pass --broker mqtt://HOST:PORT (or set METER_BROKER)")
    password_file = resolved.pop("password_file", None)
    if password_file is not None and "password" not in resolved:
        try:
            # One line; a trailing newline from `echo secret > file` is not part of the password.
            resolved["password"] = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{password_file}: cannot read the broker password: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    if resolved.get("password") is not None and resolved.get("username") is None:
        raise ConfigError("a broker password needs a username (--username or METER_USERNAME)")
    metrics_password_file = resolved.pop("metrics_password_file", None)
    if metrics_password_file is not None:
        try:
            resolved["metrics_password"] = (
                metrics_password_file.read_text(encoding="utf-8").rstrip("\r\n"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{metrics_password_file}: cannot read the metrics password: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    if ("metrics_username" in resolved) != bool(resolved.get("metrics_password")):
        raise ConfigError("metrics basic auth needs both --metrics-username and "
                          "--metrics-password-file")
    if "metrics_key_file" in resolved and "metrics_cert_file" not in resolved:
        raise ConfigError("--metrics-key-file: a key needs --metrics-cert-file")
    broker: BrokerAddress = resolved["broker"]
    tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if k in resolved]
    if tls_keys and not broker.tls:
        raise ConfigError(f"{_flag(tls_keys[0])}: TLS options need an mqtts:// broker URL")
    if ("cert_file" in resolved) != ("key_file" in resolved) and "cert_file" not in resolved:
        raise ConfigError("--key-file: a client key needs --cert-file")
    if resolved.get("reconnect_min", 0.2) > resolved.get("reconnect_max", 30.0):
        raise ConfigError("--reconnect-min: must not exceed --reconnect-max")
    if resolved.get("receive_maximum", 4000) > 65535:
        raise ConfigError("--receive-maximum: MQTT allows at most 65535")
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in resolved.items() if k in known})
