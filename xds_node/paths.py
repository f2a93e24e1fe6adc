"""Where the node's shipped files live (published WSDLs), in one place every module can import."""

from __future__ import annotations

import os
from pathlib import Path


def wsdl_dir() -> Path:
    """Where our published WSDLs live: ``XDS_WSDL_DIR`` or the ``wsdl/`` folder of the checkout."""
    env = os.environ.get("XDS_WSDL_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "wsdl"
