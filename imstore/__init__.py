"""imstore: an immutable, versioned, content-addressed store."""

from .errors import ImstoreError
from .store import PutResult, Store, VerifyReport, Version

__all__ = ["Store", "Version", "PutResult", "VerifyReport", "CacheSettings", "ImstoreError", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "CacheSettings":  # on first use: the read cache's modules cost start-up time a command that reads no object need not pay
        from .cache import CacheSettings

        return CacheSettings
    raise AttributeError(f"module 'imstore' has no attribute {name!r}")
