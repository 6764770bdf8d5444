"""Importers: license-server and call-centre logs turned into meter events.

`flexlm` reads FlexLM debug logs, `asterisk` an Asterisk queue_log; both pure (lines in, events
out). `command` is `meter import`: it writes the events as JSONL or ingests them.
"""

from meter.importers.asterisk import AsteriskImport
from meter.importers.common import BadLine, Imported, longest_quiet
from meter.importers.flexlm import FlexlmImport

__all__ = ["AsteriskImport", "BadLine", "FlexlmImport", "Imported", "longest_quiet"]
