"""Where the tests find the repository and the developers' ``../shared`` folder (absent for users)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
