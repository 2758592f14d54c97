"""Keep numba's on-disk kernel cache in step with the decoder sources.

numba's ``cache=True`` keys a compiled function on the stamp of the file that defines it,
not on the files of the functions it inlines: after an edit to ``decode.py`` alone, the
walkers in ``pcap.py``/``pcapng.py`` would load stale machine code. A fingerprint of every
kernel source, kept beside the cache, drops those cache files whenever any source changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

KERNEL_MODULES = ("decode", "pcap", "pcapng", "skips")
_HERE = Path(__file__).resolve().parent
_STAMP = "netsift-kernels.sha1"


def ensure_fresh() -> None:
    digest = hashlib.sha1()
    for name in KERNEL_MODULES:
        digest.update((_HERE / f"{name}.py").read_bytes())
    cache = _HERE / "__pycache__"
    stamp = cache / _STAMP
    try:
        if stamp.read_text() == digest.hexdigest():
            return
    except OSError:
        pass
    try:
        cache.mkdir(exist_ok=True)
        for name in KERNEL_MODULES:
            for pattern in (f"{name}.*.nbi", f"{name}.*.nbc"):
                for stale in cache.glob(pattern):
                    stale.unlink(missing_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:
        pass  # read-only install: numba then caches elsewhere, keyed by installed files
