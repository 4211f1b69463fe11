"""vidfuse: text-to-video retrieval pipeline (extract -> train -> index -> benchmark)."""

__version__ = "0.1.0"
