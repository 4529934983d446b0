"""asyncssh modules sluis keeps from loading: their algorithms are never offered here.

Upstream behaviour replaced (asyncssh 2.24, `asyncssh/crypto/__init__.py`): the package imports
`.umac` (UMAC MACs through libnettle, loaded with ctypes) and `.x509` (X.509 certificates, which
first import all of `cryptography.x509` and then look for pyOpenSSL) inside `try: ... except
ImportError`, and works without them; `mac.py` and `public_key.py` then mark the two as
unavailable. sluis offers no `umac-*` MAC and no `x509v3-*` key (`sftp/algorithms.py`), yet the
attempts cost every server process 1.1 MiB of heap and libnettle's pages (issue 12: peak memory
of an upload), and with pyOpenSSL installed they would enable certificate parsing sluis never
asked for. A `None` in `sys.modules` makes each import raise ImportError at once: the case
upstream handles. tests/test_unloaded.py fails when an upgrade changes that handling.
"""

from __future__ import annotations

import sys

UNLOADED = ("asyncssh.crypto.umac", "asyncssh.crypto.x509")


def keep_out() -> None:
    """Mark the modules as unavailable; a no-op for any that is already loaded."""
    for name in UNLOADED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
