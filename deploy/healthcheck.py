"""The container's HEALTHCHECK: exit 0 when `meter serve` answers /healthz with "ok", else 1.

It reads the same METER_* variables as the daemon: METER_METRICS_ADDR for the port, and
METER_METRICS_CERT_FILE to speak TLS. /healthz needs no credentials even with metrics basic auth
on, so no password is needed here. Under TLS the certificate names the public host, not
127.0.0.1, so it is not verified: this checks that the process answers, not who it is.
Standard library only: it runs with the image's Python and nothing else.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def main() -> int:
    """Probe /healthz once; one line on stderr when it fails."""
    host, _, port = os.environ.get("METER_METRICS_ADDR", "127.0.0.1:9464").rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard bind answers on loopback
        host = "127.0.0.1" if host != "::" else "::1"
    tls = bool(os.environ.get("METER_METRICS_CERT_FILE"))
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"{'https' if tls else 'http'}://{netloc}/healthz"
    context = ssl._create_unverified_context() if tls else None  # noqa: S323 - see the docstring
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:  # noqa: S310
            body = response.read(64)
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if body.strip() != b"ok":
        print(f"healthcheck: {url} answered {body!r}, not ok", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
