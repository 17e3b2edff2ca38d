"""Running the interop client scripts of this folder in their own processes, as the tests do:
genai in ours (it crashed the process once in ~5 loads), Optimum in .venvs/optimum."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

INTEROP = Path(__file__).resolve().parent
OPTIMUM_PYTHON = INTEROP.parents[1] / ".venvs" / "optimum" / "bin" / "python"


def run_client(python: str | Path, script: str, *args: str) -> dict:
    """Run a client script; its last stdout line is its JSON answer. A crash (a signal)
    fails the test with the client's stderr."""
    if not Path(python).is_file():
        pytest.fail(f"{python} does not exist: run tests/interop/optimum_env.sh")
    done = subprocess.run(
        [str(python), str(INTEROP / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        how = (
            f"killed by signal {-done.returncode}"
            if done.returncode < 0
            else f"exit status {done.returncode}"
        )
        pytest.fail(f"{script} {args[0]} failed ({how}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def genai(*args: str) -> dict:
    return run_client(sys.executable, "genai_client.py", *args)
