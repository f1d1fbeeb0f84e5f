"""Models converted once into the user's cache: the embedded SmolLM2 and the audio models from PyPI packages.

Each conversion is written into a temporary folder beside the final one and renamed into place, so a
half-written folder is never seen; a marker file, written last, says a folder is complete. A lock file makes
a second process wait and reuse the first's result.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock: concurrent starts may both convert, the rename still keeps the folder whole
    fcntl = None  # type: ignore[assignment]

NEARLY_FULL_BYTES = 64 * 2**20  # free space left when a conversion fails: below this, the disk was full


def default_cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """$MLXD_CACHE_DIR, else $XDG_CACHE_HOME/mlxd, else ~/.cache/mlxd."""
    if environ.get("MLXD_CACHE_DIR"):
        return Path(environ["MLXD_CACHE_DIR"])
    xdg = environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return base / "mlxd"


def package_file(package: str, name: str) -> Path | None:
    """A data file inside an installed package, found without importing it (its declared deps may be absent)."""
    spec = importlib.util.find_spec(package)
    folders: list[str] = []
    if spec is not None:
        folders = list(spec.submodule_search_locations or [])
        if not folders and spec.origin:
            folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def converted_folder(final: Path, build: Callable[[Path], None], marker: str, what: str) -> Path:
    """Return `final`, first running `build(tmp)` into a fresh folder renamed to it, unless `final` is complete.

    `build` must write `marker` last. `what` names the model in the error a full disk gets.
    """
    if (final / marker).is_file():
        return final
    models = final.parent
    models.mkdir(parents=True, exist_ok=True)
    with _locked(models / f".{final.name}.lock"):
        if (final / marker).is_file():
            return final
        for stale in models.glob(f".{final.name}.*.tmp") if fcntl else ():  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=models))
        try:
            build(tmp)
            if final.exists():  # unfinished (no marker), e.g. copied in by hand: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException as exc:
            free = shutil.disk_usage(models).free
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, Exception) and free < NEARLY_FULL_BYTES:  # MLX's write error does not say why
                raise OSError(errno.ENOSPC, f"the disk is full: converting {what} into {models} "
                              f"failed ({exc}); free some space there or set MLXD_CACHE_DIR") from exc
            raise
    return final


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
