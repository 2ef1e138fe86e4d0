"""Helpers shared by the tests that drive CMake."""
import shutil
import sys
from pathlib import Path


def find_tool(name: str) -> str | None:
    """A build tool from PATH, else from the interpreter's environment (pip's cmake wheel)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None
