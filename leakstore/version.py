"""The package version (one home: the package, stores and models record it)."""

__version__ = "0.1.0"
