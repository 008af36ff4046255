"""asset-watcher: report files that land on a host to Dagster's External Assets REST API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
