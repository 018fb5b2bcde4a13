"""imstore: an immutable, versioned, content-addressed store."""

from .cache import CacheSettings
from .errors import ImstoreError
from .store import PutResult, Store, VerifyReport, Version

__all__ = ["Store", "Version", "PutResult", "VerifyReport", "CacheSettings", "ImstoreError", "__version__"]

__version__ = "0.1.0"
