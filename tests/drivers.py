"""Running the project's bash drivers from tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_driver(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``bash SCRIPT`` from the repository root with ``env`` added and this interpreter's folder first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}
    return subprocess.run(["bash", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
