"""license-meter: exact concurrent-license metering (the imperative shell).

`meter` owns everything that touches the world: CLI, config, MQTT, SQLite, metrics, reports.
The pure rules live in `rating`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
