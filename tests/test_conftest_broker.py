"""The broker fixtures start a real Mosquitto that really relays messages."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import Broker


@pytest.mark.broker
def test_session_broker_relays_a_qos1_message(mosquitto: Broker, topic_prefix: str) -> None:
    """A message published with mosquitto_pub at QoS 1 reaches a mosquitto_sub subscriber."""
    topic = f"{topic_prefix}/acme/events"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-t", topic,
         "-q", "1", "-C", "1", "-W", "10"],
        stdout=subprocess.PIPE,
    )
    # Publish until the subscriber (which may still be connecting) has seen one message.
    for _ in range(50):
        subprocess.run(["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port),
                        "-t", topic, "-q", "1", "-m", "hello"], check=True)
        try:
            out, _ = sub.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            continue
    assert b"hello\n" == out
