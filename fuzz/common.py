"""What every fuzz engine reports, and the error for a machine that cannot run one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FuzzResult", "FuzzSetupError"]


class FuzzSetupError(RuntimeError):
    """A fuzz engine cannot run here (no clang, no atheris); the message says what to install."""


@dataclass
class FuzzResult:
    """One bounded run of one target."""

    target: str
    engine: str  # "atheris" or "libfuzzer"
    seconds: float  # wall time of the run
    executions: int  # inputs tried, as the engine counted them
    crashed: bool  # the engine found an input that crashed, hung or leaked
    crash_files: list[Path] = field(default_factory=list)  # reproducers the engine wrote
    log: str = ""  # the engine's output (its tail is enough to read a crash)
