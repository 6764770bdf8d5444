"""Paths and binaries for the deploy tests: promtool and the Prometheus server (Debian's
`prometheus` package), Alertmanager and amtool (`prometheus-alertmanager`), both installed by
.ci/run, and helpers to read the files in deploy/ and the README's anchors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.missing import missing

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"


def require(binary: str, package: str = "prometheus") -> str:
    """The path of `binary`; ends the run with one line naming its package when it is missing
    (never skips: CI installs it)."""
    found = shutil.which(binary)
    if found is None:
        missing(binary, package)
    return found


#: Alertmanager and amtool: Debian's `prometheus-alertmanager` package.
ALERTMANAGER_PACKAGE = "prometheus-alertmanager"


def readme_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text: lower case, punctuation other
    than `-` and `_` dropped, spaces made `-` (a repeated heading would get `-1`; none is)."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(slug.replace(" ", "-"))
    return anchors


def promtool(*args: str, cwd: Path = DEPLOY, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool and return its result (text output, never raises on a non-zero exit)."""
    return subprocess.run(
        [require("promtool"), *args], cwd=cwd, input=stdin.decode() if stdin is not None else None,
        capture_output=True, text=True, timeout=60, check=False,
    )


#: Identifiers in PromQL that are not metric names.
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects, by a small tokenizer: strings, label
    matchers, grouping clauses and range or offset durations are removed first; what is left
    that is not a function call or a keyword is a metric name."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names
