"""docs/design.md is kept current: it names every exported metric, every rejection reason and
every command of the CLI, and the README's links into docs/ resolve."""

from __future__ import annotations

import re
from pathlib import Path

from meter.cli import build_parser
from meter.events import REASONS

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")


def words(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text)) | set(re.findall(r"[\w-]+", text))


def test_design_names_every_exported_metric() -> None:
    source = (ROOT / "meter" / "metrics.py").read_text(encoding="utf-8")
    exported = set(re.findall(r'"(meter_[a-z_]+)"', source))
    assert len(exported) >= 20
    assert set() == exported - words(DESIGN)


def test_design_names_every_rejection_reason() -> None:
    assert set() == set(REASONS) - words(DESIGN)


def test_design_names_every_command() -> None:
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    commands = set(sub.choices or ())
    assert {"serve", "ingest", "report"} <= commands
    section = DESIGN[DESIGN.index("**CLI**"):DESIGN.index("**Settings**")]
    assert set() == commands - words(section)


def test_readme_links_into_docs_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert {"docs/design.md", "docs/performance.md"} <= links
    assert [] == sorted(link for link in links if not (ROOT / link).is_file())
