"""Daemon settings: one frozen `Settings`, resolved as flags > `METER_*` environment > TOML file >
defaults. `SETTINGS` declares each setting once; its flag, variable, TOML key and default all come
from there. Every problem is a `ConfigError` naming the flag, variable or key; the broker password
is never part of a repr or a log line.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from meter.errors import ConfigError
from meter.urls import hide_password
from rating.durations import parse_duration

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_METRICS_ADDR",
    "ENV_PREFIX",
    "FLAG_KEYS",
    "POSTGRES_SCHEMES",
    "SETTINGS",
    "BrokerAddress",
    "Setting",
    "Settings",
    "is_loopback",
    "is_postgres",
    "load_settings",
    "parse_broker_url",
    "parse_db",
    "parse_host_port",
    "redact",
    "setting",
    "share_password",
    "url_password",
]

ENV_PREFIX: Final = "METER_"
#: The variable naming the TOML settings file, as `--config` does.
CONFIG_ENV: Final = ENV_PREFIX + "CONFIG"
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


# --- value parsers (each raises ValueError with a short reason) ----------------------------------

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


#: The URL schemes of a PostgreSQL `--db` (libpq's two spellings).
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
#: The prefix that marks a `--db` as a SQLite path explicitly (`sqlite:meter.db`).
_SQLITE_PREFIX: Final = "sqlite:"


def is_postgres(db: object) -> bool:
    """Whether `db` (a `--db` value) is a PostgreSQL URL rather than a SQLite path."""
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def parse_db(text: str) -> Path | str:
    """A `--db` value: a `postgresql://` or `postgres://` URL, kept verbatim as a str (a Path
    would fold its `//`), or a SQLite path (optionally written `sqlite:PATH`) as a Path."""
    text = text.strip()
    if not text:
        raise ValueError("expected a SQLite path or a postgresql:// URL, got ''")
    if is_postgres(text):
        try:
            urlsplit(text).port  # noqa: B018 - read for its ValueError on a bad port
        except ValueError:
            raise ValueError(f"bad port in {redact(text)!r}") from None
        return text
    if text.startswith(_SQLITE_PREFIX):
        text = text[len(_SQLITE_PREFIX):]
        if not text:
            raise ValueError("sqlite: names no file (sqlite:PATH)")
    return Path(text)


def redact(db: object) -> str:
    """`db` fit to print: a PostgreSQL URL's password (in the authority or as a `password=`
    query parameter) replaced by `***`; a path as it is."""
    text = str(db)
    return hide_password(text, "***") if is_postgres(text) else text


def url_password(db: object) -> str | None:
    """The password a PostgreSQL URL holds (in the authority or as `password=`), or None."""
    if not is_postgres(db):
        return None
    parts = urlsplit(str(db))
    in_query = [v for k, v in parse_qsl(parts.query) if k == "password"]
    return in_query[-1] if in_query else (unquote(parts.password) if parts.password else None)


def share_password(db: object, environ: MutableMapping[str, str] | None = None) -> None:
    """Put the password of a PostgreSQL URL `db` in `PGPASSWORD` of `environ` (this process's
    by default), for the processes it starts: a store's `location`, which other processes open
    (the report's workers), leaves the password out, and libpq then reads `PGPASSWORD`."""
    password = url_password(db)
    if password is not None:
        (os.environ if environ is None else environ)["PGPASSWORD"] = password


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


def _db(value: object) -> Path | str:
    return parse_db(_text(value))


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


def _seconds(value: object) -> float:
    return parse_duration(value).total_seconds()


def _keepalive(value: object) -> int:
    # MQTT carries the keepalive as a 16-bit count of seconds.
    seconds = parse_duration(value).total_seconds()
    if seconds != int(seconds) or not 1 <= seconds <= 0xFFFF:
        raise ValueError(f"must be whole seconds from 1s to 65535s, got {value!r}")
    return int(seconds)


def _receive_maximum(value: object) -> int:
    number = _positive_int(value)
    if number > 0xFFFF:
        raise ValueError(f"MQTT allows at most 65535, got {number}")
    return number


def _session_expiry(value: object) -> int:
    if isinstance(value, str) and value.strip().lower() == "never":
        return SESSION_NEVER
    seconds = int(parse_duration(value).total_seconds())
    if seconds < 1:
        raise ValueError("must be at least 1s (0s would drop the queue on every disconnect)")
    return min(seconds, SESSION_NEVER)


def _broker(value: object) -> BrokerAddress:
    return parse_broker_url(_text(value))


def _host_port(value: object) -> tuple[str, int]:
    return parse_host_port(_text(value))


# --- the settings, each declared once --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Setting:
    """One `meter serve` setting. `name` is the `Settings` field and the TOML key; the flag is
    `--name-with-dashes` (none when `flag` is False, so a secret never shows in a process list)
    and the variables are `METER_NAME` then `aliases`. `default` is written as a user would write
    it and goes through `parse` like any other value (None: unset)."""

    name: str
    parse: Callable[[Any], Any]
    default: str | None
    help: str
    metavar: str | None = None
    aliases: tuple[str, ...] = ()
    flag: bool = True

    @property
    def flag_name(self) -> str:
        """The command-line flag, e.g. `--batch-wait`."""
        return "--" + self.name.replace("_", "-")

    @property
    def env_names(self) -> tuple[str, ...]:
        """The environment variables that set it, the first set one winning."""
        return (ENV_PREFIX + self.name.upper(), *self.aliases)

    @property
    def help_text(self) -> str:
        """`help` with the default, as `--help` shows it."""
        return self.help if self.default is None else f"{self.help} (default {self.default})"


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("broker", _broker, None, "broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT (required)",
            "URL", aliases=("METER_BROKER_URL",)),
    Setting("db", _db, "meter.db", "SQLite database path, or a postgresql://USER@HOST:PORT/DB URL "
            "(password best in PGPASSWORD or ~/.pgpass)", "PATH|URL"),
    Setting("contracts", _path, None, "contracts TOML file (without one every event is "
            "unknown_account)", "FILE"),
    Setting("metrics_addr", _host_port, "{}:{}".format(*DEFAULT_METRICS_ADDR),
            "HOST:PORT for /metrics (a bare PORT binds 127.0.0.1)", "HOST:PORT"),
    Setting("username", _text, None, "broker username (password: --password-file or "
            "METER_PASSWORD)", aliases=("METER_BROKER_USERNAME",)),
    Setting("password", _text, None, "broker password", aliases=("METER_BROKER_PASSWORD",),
            flag=False),
    Setting("password_file", _path, None, "file holding the broker password", "FILE",
            aliases=("METER_BROKER_PASSWORD_FILE",)),
    Setting("ca_file", _path, None, "CA certificate(s) for an mqtts:// broker", "FILE"),
    Setting("cert_file", _path, None, "client certificate for an mqtts:// broker", "FILE"),
    Setting("key_file", _path, None, "client key for --cert-file", "FILE"),
    Setting("client_id", _client_id, "license-meter", "MQTT client id of the persistent session"),
    Setting("topic_prefix", _topic_prefix, "meter", "topics are PREFIX/<account>/events", "PREFIX"),
    Setting("synchronous", _choice("OFF", "NORMAL", "FULL", "EXTRA"), "FULL",
            "SQLite synchronous mode: OFF, NORMAL, FULL or EXTRA"),
    Setting("batch_max", _positive_int, "4000", "most messages per commit", "N"),
    Setting("batch_wait", _seconds, "5ms", "longest wait to fill a batch", "DURATION"),
    Setting("batch_max_bytes", _positive_int, "8388608", "most payload bytes per commit (with "
            "--batch-max, what a batch holds in memory)", "N"),
    Setting("mqtt_version", _choice("5", "3.1.1"), "5", "MQTT protocol: 5, or 3.1.1 for brokers "
            "without MQTT 5 (RabbitMQ before 3.13); 3.1.1 keeps the session with clean_session "
            "off", "5|3.1.1"),
    Setting("receive_maximum", _receive_maximum, "8000",
            "messages the broker may have in flight to the meter (MQTT 5 Receive Maximum)", "N"),
    Setting("max_future", _seconds, "5m", "how far ahead of receipt an event may be", "DURATION"),
    Setting("max_bytes", _positive_int, "8192", "largest event payload accepted, in bytes", "N"),
    Setting("rejected_keep_bytes", _positive_int, "1024", "a rejected payload up to this size is "
            "kept whole; a longer one as its size, sha256 and this many first bytes", "N"),
    Setting("rejected_retention", _seconds, "90d", "delete rejected messages older than this",
            "DURATION"),
    Setting("rejected_max_bytes", _positive_int, "268435456", "keep at most this many bytes of "
            "rejected payloads (the oldest go first)", "N"),
    Setting("keepalive", _keepalive, "15s", "MQTT keepalive, whole seconds (a stalled broker is "
            "noticed after 1.5x this)", "DURATION"),
    Setting("session_expiry", _session_expiry, "never", "how long the broker keeps the meter's "
            "session while it is down: a duration or never", "DURATION"),
    Setting("reconnect_min", _seconds, "200ms", "first reconnect delay", "DURATION"),
    Setting("reconnect_max", _seconds, "30s", "longest reconnect delay (capped, jittered backoff)",
            "DURATION"),
    Setting("tracker_clock", _choice("wall", "events"), "wall",
            "live tracker's now: wall, or events (latest event time, for fast replays)"),
    Setting("reorder_window", _seconds, "2s", "how long live gauges wait for late events",
            "DURATION"),
    Setting("shutdown_timeout", _seconds, "3s", "bounded drain on SIGTERM before exit",
            "DURATION"),
    Setting("finalize_after", _seconds, "1h", 'finalize each period this long after it ends; '
            '"0s" turns it off', "DURATION"),
    Setting("finalize_quiet", _seconds, "10s", "finalize only after the broker connection has "
            "been idle this long (the backlog it held is drained)", "DURATION"),
    Setting("checkpoint_every", _seconds, "60s", "save the live state this often, so a restart "
            'replays only what came after (also on SIGTERM); "0s": only on SIGTERM', "DURATION"),
    Setting("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO",
            "DEBUG, INFO, WARNING or ERROR"),
    Setting("metrics_cert_file", _path, None, "PEM certificate: serve /metrics over TLS only",
            "FILE"),
    Setting("metrics_key_file", _path, None, "key for --metrics-cert-file (if not in it)", "FILE"),
    Setting("metrics_username", _text, None, "require basic auth on /metrics with this user"),
    Setting("metrics_password_file", _path, None, "file holding the /metrics basic auth password",
            "FILE"),
    Setting("http_addr", _host_port, None, "HOST:PORT for HTTP ingest and the usage API (off "
            "unless given; a bare PORT binds 127.0.0.1)", "HOST:PORT"),
    Setting("http_tokens", _path, None, "TOML file of [[token]] tables (token_sha256 or token, "
            "accounts); without it --http-addr binds only a loopback address", "FILE"),
    Setting("http_max_bytes", _positive_int, "8388608", "largest POST /v1/events body, in bytes "
            "(a larger one is 413)", "N"),
    Setting("slots", _positive_int, None, "run as one member of a cluster on a PostgreSQL --db "
            "with this many ingest slots (the same N on every member; see the README's "
            "deployment section)", "N"),
    Setting("partitions", _positive_int, "16", "live-tracking partitions of a cluster (with "
            "--slots; the same on every member)", "N"),
)

_BY_NAME: Final[Mapping[str, Setting]] = {s.name: s for s in SETTINGS}
#: Every setting's default, parsed (None where unset); the base layer of `load_settings`.
_DEFAULTS: Final[Mapping[str, Any]] = {
    s.name: None if s.default is None else s.parse(s.default) for s in SETTINGS}
#: The `flags` keys `load_settings` takes: `config` and every setting that has a flag.
FLAG_KEYS: Final[tuple[str, ...]] = ("config", *(s.name for s in SETTINGS if s.flag))


def setting(name: str) -> Setting:
    """The declaration of setting `name` (KeyError for an unknown name)."""
    return _BY_NAME[name]


def _default(name: str) -> Any:
    return _DEFAULTS.get(name)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `meter serve` needs, resolved once at startup by `load_settings`. Durations are
    seconds (float). Each field is the setting of that name in `SETTINGS`, which says what it means
    and its default; only `metrics_password` is read from a file instead."""

    broker: BrokerAddress
    username: str | None
    password: str | None = field(repr=False)
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    client_id: str
    topic_prefix: str
    metrics_addr: tuple[str, int]
    #: A SQLite path, or a PostgreSQL URL (a str, verbatim; print it only through `redact`).
    db: Path | str
    contracts: Path | None
    synchronous: str
    batch_max: int
    batch_wait: float
    batch_max_bytes: int
    mqtt_version: str
    receive_maximum: int
    max_future: float
    max_bytes: int
    rejected_keep_bytes: int
    rejected_retention: float
    rejected_max_bytes: int
    keepalive: int
    session_expiry: int
    reconnect_min: float
    reconnect_max: float
    tracker_clock: TrackerClock
    reorder_window: float
    shutdown_timeout: float
    finalize_after: float
    finalize_quiet: float
    checkpoint_every: float
    log_level: str
    metrics_cert_file: Path | None
    metrics_key_file: Path | None
    metrics_username: str | None
    http_addr: tuple[str, int] | None
    http_tokens: Path | None
    http_max_bytes: int
    slots: int | None
    partitions: int
    #: Read from `metrics_password_file`; there is no other way to set it.
    metrics_password: str | None = field(default=None, repr=False)
    #: The shared subscription's group of a cluster member's ingest slot (`meter.cluster`).
    share_group: str | None = None

    @property
    def subscription(self) -> str:
        """The topic filter the meter subscribes to: in a cluster, a shared subscription, so the
        broker gives each message to one of the slots."""
        plain = f"{self.topic_prefix}/+/events"
        return plain if self.share_group is None else f"$share/{self.share_group}/{plain}"

    def describe(self) -> str:
        """One log line of the settings that matter, never the password."""
        return (f"broker={self.broker.url} client_id={self.client_id} user={self.username or '-'} "
                f"subscription={self.subscription} db={redact(self.db)} contracts={self.contracts or '-'} "
                f"metrics={'https' if self.metrics_cert_file else 'http'}://"
                f"{self.metrics_addr[0]}:{self.metrics_addr[1]}/metrics "
                f"{'(basic auth) ' if self.metrics_username else ''}"
                f"batch={self.batch_max}/{self.batch_wait * 1000:g}ms "
                f"tracker_clock={self.tracker_clock}")


# --- resolving the layers ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Layer:
    """Raw values from one source; `where[key]` is how an error names the place `key` came from."""

    values: Mapping[str, object]
    where: Mapping[str, str]

    def parse(self) -> dict[str, Any]:
        """Every value through its setting's parser; the first bad one is a `ConfigError`."""
        parsed: dict[str, Any] = {}
        for key, raw in self.values.items():
            try:
                parsed[key] = _BY_NAME[key].parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{self.where[key]}: {exc}") from None
        return parsed


def _file_layer(path: Path) -> _Layer:
    """The TOML settings file: keys at the top level or under `[serve]`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read settings: {_why(exc)}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    table = doc.get("serve", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: key 'serve': expected a table")
    unknown = sorted(k for k in table if k not in _BY_NAME and k != "serve")
    if unknown:
        raise ConfigError(f"{path}: key {unknown[0]!r}: unknown setting "
                          f"(known: {', '.join(sorted(_BY_NAME))})")
    values = {k: v for k, v in table.items() if k in _BY_NAME}
    return _Layer(values, {k: f"{path}: key {k!r}" for k in values})


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    """`METER_*` variables (and aliases); an empty variable counts as unset."""
    values: dict[str, object] = {}
    where: dict[str, str] = {}
    for s in SETTINGS:
        name = next((n for n in s.env_names if environ.get(n)), None)
        if name is not None:
            values[s.name], where[s.name] = environ[name], name
    return _Layer(values, where)


#: The defaults of the `Settings` fields (the password files are read into passwords instead).
_SETTINGS_DEFAULTS: Final = {k: v for k, v in _DEFAULTS.items()
                             if k not in ("password_file", "metrics_password_file")}


def _flag_layer(flags: Mapping[str, object]) -> _Layer:
    """Command-line values, keyed by setting name."""
    unknown = sorted(k for k in flags if k not in _BY_NAME)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    return _Layer(flags, {k: _BY_NAME[k].flag_name for k in flags})


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _read_secret(path: Path, what: str) -> str:
    try:
        # One line; a trailing newline from `echo secret > file` is not part of the password.
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {_why(exc)}") from None


def _read_password_files(resolved: dict[str, Any]) -> None:
    """Replace `password_file` and `metrics_password_file` by the passwords they hold; a password
    given directly (any layer) wins over a broker password file."""
    password_file = resolved.pop("password_file", None)
    if password_file is not None and "password" not in resolved:
        resolved["password"] = _read_secret(password_file, "broker password")
    metrics_password_file = resolved.pop("metrics_password_file", None)
    if metrics_password_file is not None:
        resolved["metrics_password"] = _read_secret(metrics_password_file, "metrics password")


def _check_broker(resolved: Mapping[str, Any]) -> None:
    """A broker is given; credentials and TLS options fit it."""
    if "broker" not in resolved:
        raise ConfigError("no broker: pass --broker mqtt://HOST:PORT (or set METER_BROKER)")
    if resolved.get("password") is not None and resolved.get("username") is None:
        raise ConfigError("a broker password needs a username (--username or METER_USERNAME)")
    tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if k in resolved]
    if tls_keys and not resolved["broker"].tls:
        raise ConfigError(f"{setting(tls_keys[0]).flag_name}: TLS options need an mqtts:// "
                          "broker URL")
    if "key_file" in resolved and "cert_file" not in resolved:
        raise ConfigError("--key-file: a client key needs --cert-file")


def _check_metrics(resolved: Mapping[str, Any]) -> None:
    """Basic auth on /metrics has both halves; a TLS key has its certificate."""
    if ("metrics_username" in resolved) != bool(resolved.get("metrics_password")):
        raise ConfigError("metrics basic auth needs both --metrics-username and "
                          "--metrics-password-file")
    if "metrics_key_file" in resolved and "metrics_cert_file" not in resolved:
        raise ConfigError("--metrics-key-file: a key needs --metrics-cert-file")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, it is not known to be loopback


def _check_http(resolved: Mapping[str, Any]) -> None:
    """HTTP ingest without tokens takes any account's events: only from this machine."""
    addr = resolved.get("http_addr")
    if "http_tokens" in resolved and addr is None:
        raise ConfigError("--http-tokens: tokens need --http-addr (HTTP ingest is off)")
    if addr is not None and "http_tokens" not in resolved and not is_loopback(addr[0]):
        raise ConfigError(f"--http-addr {addr[0]}:{addr[1]}: without --http-tokens HTTP ingest "
                          "binds only a loopback address (127.0.0.1, ::1, localhost): give a "
                          "tokens file to listen on another")


def _check_cluster(resolved: Mapping[str, Any]) -> None:
    """A cluster shares one PostgreSQL database and keeps each slot's broker session forever (an
    expiring session drops what it holds for a dead member)."""
    if "slots" not in resolved:
        if "partitions" in resolved:
            raise ConfigError("--partitions: tracking partitions need --slots (a cluster)")
        return
    if not is_postgres(resolved.get("db", _DEFAULTS["db"])):
        raise ConfigError("--slots: a cluster needs a PostgreSQL --db postgresql://... (members "
                          "on several hosts share one database)")
    if resolved.get("session_expiry", SESSION_NEVER) != SESSION_NEVER:
        raise ConfigError("--session-expiry: a cluster's slots keep their broker sessions "
                          "forever (an expiring one loses what the broker queued for a dead "
                          "member); leave it at never")
    if resolved.get("mqtt_version", "5") != "5":
        raise ConfigError("--mqtt-version: a cluster needs MQTT 5 (shared subscriptions)")


def _check_reconnect(resolved: Mapping[str, Any]) -> None:
    low = resolved.get("reconnect_min", _DEFAULTS["reconnect_min"])
    if low > resolved.get("reconnect_max", _DEFAULTS["reconnect_max"]):
        raise ConfigError("--reconnect-min: must not exceed --reconnect-max")


def load_settings(flags: Mapping[str, object] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings: `flags` (keys as in `SETTINGS`, None = not given) > `environ` > the TOML
    file named by `flags["config"]` or `METER_CONFIG` > defaults. Reads the config and password
    files; raises `ConfigError` naming the source of a bad value."""
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = environ if environ is not None else {}
    config_path = given.pop("config", None) or environ.get(CONFIG_ENV)
    layers = [_env_layer(environ), _flag_layer(given)]  # lowest precedence first
    if config_path:
        layers.insert(0, _file_layer(Path(str(config_path))))
    resolved: dict[str, Any] = {}
    for layer in layers:
        resolved.update(layer.parse())
    _read_password_files(resolved)
    for check in (_check_broker, _check_metrics, _check_reconnect, _check_http, _check_cluster):
        check(resolved)
    return Settings(**{**_SETTINGS_DEFAULTS, **resolved})
