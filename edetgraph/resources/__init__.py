"""Facts and files shipped with edetgraph (official model counts, checkpoint variable lists,
the official test image). Read through `path()` so tests never reach outside the package."""
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """Absolute path of a shipped resource file, e.g. ``path("street.jpg")``."""
    p = _HERE / name
    if not p.exists():
        raise FileNotFoundError(f"edetgraph resource {name!r} is not shipped (looked in {_HERE})")
    return p
