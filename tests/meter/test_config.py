"""Settings resolve as flags > METER_* environment > TOML file > defaults; errors name the source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meter.config import (
    FLAG_KEYS,
    SETTINGS,
    BrokerAddress,
    Settings,
    load_settings,
    parse_broker_url,
    setting,
)
from meter.errors import ConfigError


def test_defaults_need_only_a_broker() -> None:
    """With nothing but a broker address, every other setting has a working default."""
    s = load_settings({"broker": "mqtt://broker.example"}, {})
    assert BrokerAddress("broker.example", 1883, False) == s.broker
    assert ("license-meter", "meter", "meter/+/events") == (s.client_id, s.topic_prefix,
                                                              s.subscription)
    assert ("127.0.0.1", 9464) == s.metrics_addr
    assert (4000, 0.005, 300.0) == (s.batch_max, s.batch_wait, s.max_future)
    assert (None, None) == (s.username, s.password)


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    """Each key comes from the highest layer that sets it."""
    conf = tmp_path / "meter.toml"
    conf.write_text('broker = "mqtt://file:1"\nclient_id = "from-file"\ntopic_prefix = "f"\n'
                    'batch_wait = "20ms"\n')
    s = load_settings(
        {"config": str(conf), "broker": "mqtt://flag:3", "db": None},
        {"METER_BROKER": "mqtt://env:2", "METER_CLIENT_ID": "from-env", "METER_DB": "/x/env.db"},
    )
    assert ("flag", 3) == (s.broker.host, s.broker.port)
    assert "from-env" == s.client_id
    assert ("f", 0.02) == (s.topic_prefix, s.batch_wait)
    assert Path("/x/env.db") == s.db


def test_password_file_is_read_and_never_shown(tmp_path: Path) -> None:
    """The password comes from a file (trailing newline dropped) and is in no repr or log line."""
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    s = load_settings({"broker": "mqtts://b:8883", "username": "meter"},
                      {"METER_BROKER_PASSWORD_FILE": str(secret)})
    assert "s3cret-value" == s.password
    assert "s3cret" not in repr(s)
    assert "s3cret" not in s.describe()


@pytest.mark.parametrize(("flags", "env", "message"), [
    ({}, {}, "no broker: pass --broker"),
    ({"broker": "http://x"}, {}, "--broker: expected mqtt://HOST:PORT"),
    ({"broker": "mqtt://u:p@x"}, {}, "--broker: put credentials in username"),
    ({"broker": "mqtt://x", "batch_max": "0"}, {}, "--batch-max: expected a whole number >= 1"),
    ({"broker": "mqtt://x"}, {"METER_BATCH_WAIT": "soon"}, "METER_BATCH_WAIT: expected a duration"),
    ({"broker": "mqtt://x", "ca_file": "/ca.pem"}, {}, "--ca-file: TLS options need an mqtts://"),
    ({"broker": "mqtt://x", "metrics_addr": "nohost:"}, {}, "--metrics-addr: expected a port"),
    ({"broker": "mqtt://x", "topic_prefix": "a/#"}, {}, "--topic-prefix: a topic prefix has no"),
    ({"broker": "mqtt://x", "tracker_clock": "sundial"}, {}, "--tracker-clock: must be one of"),
    ({"broker": "mqtt://x"}, {"METER_PASSWORD": "p"}, "a broker password needs a username"),
])
def test_bad_values_name_their_source(flags: dict[str, str], env: dict[str, str],
                                      message: str) -> None:
    """A bad value is one ConfigError naming the flag or variable it came from."""
    with pytest.raises(ConfigError) as info:
        load_settings(flags, env)
    assert str(info.value).startswith(message), str(info.value)


def test_bad_file_key_names_file_and_key(tmp_path: Path) -> None:
    """An unknown or bad key in the TOML file names the file and the key."""
    conf = tmp_path / "m.toml"
    conf.write_text('broker = "mqtt://x"\nbatch_maxx = 3\n')
    with pytest.raises(ConfigError, match=r"m\.toml: key 'batch_maxx': unknown setting"):
        load_settings({"config": str(conf)}, {})
    conf.write_text('[serve]\nbroker = "mqtt://x"\nbatch_max = -1\n')
    with pytest.raises(ConfigError, match=r"m\.toml: key 'batch_max': expected a whole number"):
        load_settings({}, {"METER_CONFIG": str(conf)})


@pytest.mark.parametrize(("text", "expected"), [
    ("mqtt://h", BrokerAddress("h", 1883, False)),
    ("mqtts://h", BrokerAddress("h", 8883, True)),
    ("mqtt://127.0.0.1:18830", BrokerAddress("127.0.0.1", 18830, False)),
    ("mqtts://[::1]:9", BrokerAddress("::1", 9, True)),
])
def test_broker_urls(text: str, expected: BrokerAddress) -> None:
    """mqtt:// defaults to port 1883 and mqtts:// (TLS) to 8883."""
    assert expected == parse_broker_url(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("5ms", 0.005), ("1.5s", 1.5), ("5m", 300.0), ("12h", 43200.0), ("0s", 0.0),
    ("1h30m", 5400.0), ("2d", 172800.0),  # the contracts file's compound form too
])
def test_durations(text: str, expected: float) -> None:
    """Duration settings take the one grammar of `rating.durations` and hold seconds."""
    assert expected == load_settings({"broker": "mqtt://x", "batch_wait": text}, {}).batch_wait


#: A value for every setting other than its default, as a user would write it on any layer.
SAMPLE = {
    "broker": "mqtt://b:2", "db": "x.db", "contracts": "c.toml", "metrics_addr": "127.0.0.1:1",
    "username": "u", "password": "p", "password_file": "PW", "ca_file": "ca.pem",
    "cert_file": "c.pem", "key_file": "k.pem", "client_id": "c", "topic_prefix": "t",
    "synchronous": "OFF", "batch_max": "7", "batch_wait": "7ms", "batch_max_bytes": "7",
    "receive_maximum": "7", "mqtt_version": "3.1.1",
    "max_future": "7m", "max_bytes": "7", "keepalive": "7s", "session_expiry": "7h",
    "reconnect_min": "7ms", "reconnect_max": "7s", "tracker_clock": "events",
    "reorder_window": "7s", "shutdown_timeout": "7s", "finalize_after": "7h",
    "finalize_quiet": "7s", "checkpoint_every": "7s", "log_level": "DEBUG",
    "metrics_cert_file": "c.pem", "metrics_key_file": "k.pem", "metrics_username": "u",
    "metrics_password_file": "PW",
    "rejected_keep_bytes": "7", "rejected_retention": "7d", "rejected_max_bytes": "7",
    "http_addr": "127.0.0.1:7", "http_tokens": "tokens.toml", "http_max_bytes": "7",
    "slots": "7", "partitions": "7",
}


#: What else a setting needs to be accepted, and which Settings field shows it (files -> passwords).
NEEDS = {"ca_file": {"broker": "mqtts://b"}, "cert_file": {"broker": "mqtts://b"},
         "key_file": {"broker": "mqtts://b", "cert_file": "c.pem"},
         "password": {"username": "u"}, "password_file": {"username": "u"},
         "metrics_key_file": {"metrics_cert_file": "c.pem"},
         "metrics_username": {"metrics_password_file": "PW"},
         "metrics_password_file": {"metrics_username": "u"},
         "http_tokens": {"http_addr": "127.0.0.1:1"},
         "slots": {"db": "postgresql://u@h/d"},
         "partitions": {"db": "postgresql://u@h/d", "slots": "3"}}
SHOWN_AS = {"password_file": "password", "metrics_password_file": "metrics_password"}


@pytest.mark.parametrize("name", [s.name for s in SETTINGS])
def test_every_setting_is_reachable_by_flag_env_and_toml_key(name: str, tmp_path: Path) -> None:
    """Each entry of SETTINGS sets the field of its name from the flags, `METER_NAME` and the
    TOML key alike, to the same value."""
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")

    def fill(value: str) -> str:
        return str(secret) if value == "PW" else value
    base = {"broker": "mqtt://b"} | {k: fill(v) for k, v in NEEDS.get(name, {}).items()}
    base.pop(name, None)
    raw = fill(SAMPLE[name])
    field = SHOWN_AS.get(name, name)
    expected = getattr(load_settings({**base, name: raw}, {}), field)
    conf = tmp_path / "m.toml"
    conf.write_text(f"[serve]\n{name} = {raw!r}\n".replace("'", '"'))
    from_env = getattr(load_settings(base, {"METER_" + name.upper(): raw}), field)
    from_file = getattr(load_settings({**base, "config": str(conf)}, {}), field)
    assert (expected, expected) == (from_env, from_file)
    declared = setting(name)
    assert expected not in (None, declared.default and declared.parse(declared.default))


def test_the_table_names_flags_variables_and_settings_fields() -> None:
    """One declaration per setting: the flag and variable are derived from the name, FLAG_KEYS
    lists every setting but the password, and each Settings field is a setting (but the two
    derived ones: the password read from its file, a cluster slot's shared-subscription group)."""
    batch_wait = setting("batch_wait")
    assert ("--batch-wait", ("METER_BATCH_WAIT",)) == (batch_wait.flag_name, batch_wait.env_names)
    assert ("METER_BROKER", "METER_BROKER_URL") == setting("broker").env_names
    assert "longest wait to fill a batch (default 5ms)" == batch_wait.help_text
    names = [s.name for s in SETTINGS]
    assert ("config", *(n for n in names if n != "password")) == FLAG_KEYS
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(names) - {"password_file", "metrics_password_file"} == fields - {"metrics_password",
                                                                             "share_group"}


def test_defaults_are_the_tables() -> None:
    """Every default in SETTINGS is what a Settings has when nothing sets it."""
    s = load_settings({"broker": "mqtt://b"}, {})
    assert (0xFFFFFFFF, 15, 0.2, 30.0, 2.0, 3.0, 3600.0, 8000, 8192) == (
        s.session_expiry, s.keepalive, s.reconnect_min, s.reconnect_max, s.reorder_window,
        s.shutdown_timeout, s.finalize_after, s.receive_maximum, s.max_bytes)
    assert (Path("meter.db"), "FULL", "wall", "INFO") == (s.db, s.synchronous, s.tracker_clock,
                                                           s.log_level)


@pytest.mark.parametrize(("flags", "env", "message"), [
    ({"max_future": "5"}, {},
     '--max-future: 5 is not a duration: write a unit, e.g. "5s" or "5m"'),
    ({}, {"METER_BATCH_WAIT": "5"},
     'METER_BATCH_WAIT: 5 is not a duration: write a unit, e.g. "5s" or "5m"'),
    ({}, {"METER_REORDER_WINDOW": "0.5"},
     'METER_REORDER_WINDOW: 0.5 is not a duration: write a unit, e.g. "0.5s"'),
    ({"finalize_after": "0"}, {},
     '--finalize-after: 0 is not a duration: write a unit, e.g. "0s" or "0m"'),
    ({"keepalive": "1.5s"}, {}, "--keepalive: must be whole seconds from 1s to 65535s, got '1.5s'"),
    ({"session_expiry": "0s"}, {},
     "--session-expiry: must be at least 1s (0s would drop the queue on every disconnect)"),
    ({"receive_maximum": "70000"}, {}, "--receive-maximum: MQTT allows at most 65535, got 70000"),
    ({"reconnect_min": "1m", "reconnect_max": "30s"}, {},
     "--reconnect-min: must not exceed --reconnect-max"),
    ({"shutdown_timeout": "3 s"}, {},
     "--shutdown-timeout: expected a duration like '5ms', '30s', '30m' or '1h30m', got '3 s'"),
])
def test_bad_durations_say_what_to_write(flags: dict[str, str], env: dict[str, str],
                                         message: str) -> None:
    """A bare number is refused with the fix in the message; the flag or variable is named."""
    with pytest.raises(ConfigError) as info:
        load_settings({"broker": "mqtt://x", **flags}, env)
    assert message == str(info.value)


@pytest.mark.parametrize(("toml", "message"), [
    ("batch_wait = 5", 'key \'batch_wait\': 5 is not a duration: write a unit, e.g. "5s" or "5m"'),
    ("max_future = 0.5", 'key \'max_future\': 0.5 is not a duration: write a unit, e.g. "0.5s"'),
    ('batch_wait = "5"', 'key \'batch_wait\': 5 is not a duration: write a unit, e.g. "5s" or "5m"'),
    ("keepalive = 15", 'key \'keepalive\': 15 is not a duration: write a unit, e.g. "15s" or "15m"'),
])
def test_toml_bare_number_durations_name_the_key(toml: str, message: str, tmp_path: Path) -> None:
    """`batch_wait = 5` in the settings file no longer means 5 seconds: it is refused, key named."""
    conf = tmp_path / "m.toml"
    conf.write_text(f'[serve]\nbroker = "mqtt://x"\n{toml}\n')
    with pytest.raises(ConfigError) as info:
        load_settings({"config": str(conf)}, {})
    assert f"{conf}: {message}" == str(info.value)


def test_special_durations() -> None:
    """session_expiry "never" is the MQTT maximum; finalize_after "0s" turns finalization off."""
    s = load_settings({"broker": "mqtt://x", "session_expiry": "never", "finalize_after": "0s"}, {})
    assert (0xFFFFFFFF, 0.0) == (s.session_expiry, s.finalize_after)


@pytest.mark.parametrize(("given", "message"), [
    ({"slots": "3"}, "--slots: a cluster needs a PostgreSQL --db postgresql://... (members on "
                     "several hosts share one database)"),
    ({"partitions": "8"}, "--partitions: tracking partitions need --slots (a cluster)"),
    ({"slots": "3", "db": "postgresql://u@h/d", "session_expiry": "1h"},
     "--session-expiry: a cluster's slots keep their broker sessions forever (an expiring one "
     "loses what the broker queued for a dead member); leave it at never"),
    ({"slots": "3", "db": "postgresql://u@h/d", "mqtt_version": "3.1.1"},
     "--mqtt-version: a cluster needs MQTT 5 (shared subscriptions)"),
])
def test_a_cluster_setting_that_cannot_work_is_one_line(given: dict[str, str],
                                                         message: str) -> None:
    """--slots needs PostgreSQL, sessions that never expire and MQTT 5; each misfit says so."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"broker": "mqtt://b", **given}, {})
    assert message == str(caught.value)


def test_a_cluster_member_subscribes_to_the_shared_filter_of_its_slot() -> None:
    """Slot k is client id CLIENT_ID-k on $share/CLIENT_ID/PREFIX/+/events; a lone daemon keeps
    the plain filter."""
    from meter.cluster.node import slot_settings

    settings = load_settings({"broker": "mqtt://b", "db": "postgresql://u@h/d", "slots": "3",
                              "client_id": "lm", "topic_prefix": "cc"}, {})
    assert "cc/+/events" == settings.subscription
    own = slot_settings(settings, 2)
    assert ("lm-2", "$share/lm/cc/+/events") == (own.client_id, own.subscription)
    assert (3, 16) == (settings.slots, settings.partitions)
