"""One clear line when the machine lacks a tool the suite needs, instead of an error per test.

The suite uses real servers (Mosquitto, Prometheus, Alertmanager, PostgreSQL), which come from
Debian packages; `bash .ci/dev test` installs them (as root or with passwordless sudo). The first
test that needs a missing one ends the whole run with this line, exit code 4.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

EXIT_CODE = 4


def missing(what: str, package: str) -> NoReturn:
    """End the test session: `what` is not installed; the Debian `package` provides it."""
    pytest.exit(f"{what} not found: install the Debian package {package} "
                f"(sudo apt-get install {package}; `bash .ci/dev test` does it for you)",
                returncode=EXIT_CODE)
