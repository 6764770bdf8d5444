"""Settings resolve as flags > METER_* environment > TOML file > defaults; errors name the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter.config import BrokerAddress, load_settings, parse_broker_url, parse_seconds
from meter.errors import ConfigError


def test_defaults_need_only_a_broker() -> None:
    """With nothing but a broker address, every other setting has a working default."""
    s = load_settings({"broker": "mqtt://broker.example"}, {})
    assert BrokerAddress("broker.example", 1883, False) == s.broker
    assert ("license-meter", "meter", "meter/+/events") == (s.client_id, s.topic_prefix,
                                                              s.subscription)
    assert ("127.0.0.1", 9464) == s.metrics_addr
    assert (1000, 0.005, 300.0) == (s.batch_max, s.batch_wait, s.max_future)
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
    ("5ms", 0.005), ("1.5s", 1.5), ("5m", 300.0), ("12h", 43200.0), ("2", 2.0), (0.25, 0.25),
    ("1h30m", 5400.0), ("2d", 172800.0),  # the contracts file's compound form too
])
def test_durations(text: str | float, expected: float) -> None:
    """Durations are seconds or strings with ms, s, m, h or d."""
    assert expected == parse_seconds(text)
