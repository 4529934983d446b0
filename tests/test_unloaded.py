"""The asyncssh modules sluis keeps from loading (server/unloaded.py): upstream must still treat
a failed import of each as "not available", and a server process must really go without them.

The tripwire reads asyncssh's own source: an upgrade that imports the modules unguarded, or
names them differently, fails here instead of breaking `sluis serve` at start.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import asyncssh
import asyncssh.crypto
import asyncssh.mac
import asyncssh.public_key

from sluis.server import unloaded
from sluis.server.sftp.algorithms import MACS, USER_SIGNATURES


def test_asyncssh_imports_each_unloaded_module_guarded() -> None:
    assert asyncssh.__version__.startswith("2.24."), asyncssh.__version__
    crypto = inspect.getsource(asyncssh.crypto)
    assert ("try:\n    from .umac import umac32, umac64, umac96, umac128\n"
            "except (ImportError, AttributeError, OSError)") in crypto
    assert ("try:\n    from .x509 import X509Certificate, X509Name, X509NamePattern\n"
            "    from .x509 import generate_x509_certificate, import_x509_certificate\n"
            "except (ImportError, AttributeError)") in crypto
    assert ("try:\n    from .crypto import umac64, umac128\n    _umac_available = True\n"
            "except ImportError") in inspect.getsource(asyncssh.mac)
    assert "_x509_available = True\nexcept ImportError" in inspect.getsource(asyncssh.public_key)
    assert set(unloaded.UNLOADED) == {"asyncssh.crypto.umac", "asyncssh.crypto.x509"}


def test_what_is_unloaded_is_never_offered() -> None:
    assert not [mac for mac in MACS if mac.startswith("umac")]
    assert not [sig for sig in USER_SIGNATURES if sig.startswith("x509")]


def test_a_sluis_process_imports_asyncssh_without_them() -> None:
    """In a fresh interpreter (this one imported asyncssh before sluis): importing sluis first
    keeps both modules and `cryptography.x509` out, and asyncssh marks UMAC and X.509 as
    unavailable rather than failing."""
    code = ("import sys, sluis.server.cli.main, asyncssh, asyncssh.mac, asyncssh.public_key\n"
            "print(sorted(m for m in ('asyncssh.crypto.umac', 'asyncssh.crypto.x509', 'cryptography.x509')"
            " if sys.modules.get(m) is not None), asyncssh.mac._umac_available,"
            " asyncssh.public_key._x509_available)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False", "False"], done.stdout
