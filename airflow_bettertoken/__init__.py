"""Apache Airflow provider for BetterToken's gpt-image-2 image edit API."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
