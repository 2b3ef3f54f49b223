"""docs/conformance.md is what `make conformance` writes when every test it names passes."""

from __future__ import annotations

import subprocess
import sys

from tests.support import conformance


def test_conformance_doc_is_current():
    out = subprocess.run([sys.executable, "-m", "tests.support.conformance", "--check"],
                         cwd=conformance.ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
