"""Where the shared real assets live, and safe (atomic) writing of output files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import AssetsError, OutputError

ASSETS_ENV = "RMT_DEPLOY_ASSETS"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def assets_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The shared assets folder: `override`, else $RMT_DEPLOY_ASSETS, else ../shared/assets.

    The default is taken relative to the project's root (next to the checkout), then relative
    to the current directory, so both an editable install and a run from the repo find it.
    """
    if override is not None:
        candidates = [Path(override)]
    elif os.environ.get(ASSETS_ENV):
        candidates = [Path(os.environ[ASSETS_ENV])]
    else:
        candidates = [
            _REPO_ROOT.parent / "shared" / "assets",
            Path.cwd().parent / "shared" / "assets",
        ]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    tried = ", ".join(str(p) for p in candidates)
    raise AssetsError(
        f"shared assets folder not found (tried {tried}); point {ASSETS_ENV} or --assets "
        "at the folder that holds weights/, cifar10/ and imagenet-val-1300/"
    )


def ensure_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (with parents) and prove it is writable before any long work starts."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {out}: {exc.strerror or exc}") from exc
    return out


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it into place only if the block succeeds.

    Readers never see a half-written file, and a failure leaves no partial file behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | os.PathLike[str], data: Any) -> Path:
    return write_text_atomic(target, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str, error: type[Exception] = OutputError) -> Any:
    """Parse a JSON file this tool wrote; an unreadable one raises `error` naming `what`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB blocks (checkpoints and ONNX files can be large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_with_atomic(target: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    """Call `writer(tmp_path)` and move the result into place atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)
