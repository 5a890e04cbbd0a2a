"""Where the shared real assets live, and safe (atomic) writing of output files."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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


_NAME_MAX = 255  # bytes per path component: ext4, xfs, btrfs, APFS, NTFS (in UTF-16 units)
_PATH_MAX = 4096


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the OS would refuse `path` as a file name (a component over 255 bytes, or the whole
    path over 4096), or None. Checked up front: `Path.exists()` raises on such a name instead
    of answering, which would otherwise surface as a traceback far from the option that
    caused it."""
    text = os.fsencode(os.fspath(path))
    if len(text) >= _PATH_MAX:
        return f"the path is {len(text)} bytes long; the file system allows {_PATH_MAX - 1}"
    for part in text.split(b"/"):
        if len(part) > _NAME_MAX:
            shown = os.fsdecode(part)
            return (
                f"the name {shown[:24]}…{shown[-8:]} is {len(part)} bytes long; the file system "
                f"allows {_NAME_MAX} per file or folder name"
            )
    return None


def is_file(path: str | os.PathLike[str]) -> bool:
    """`Path.is_file()` that answers False instead of raising for names the OS refuses."""
    try:
        return Path(path).is_file()
    except OSError:
        return False


def is_dir(path: str | os.PathLike[str]) -> bool:
    """`Path.is_dir()` that answers False instead of raising for names the OS refuses."""
    try:
        return Path(path).is_dir()
    except OSError:
        return False


def ensure_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (with parents) and prove it is writable before any long work starts."""
    out = Path(path)
    problem = path_problem(out)
    if problem:
        raise OutputError(
            f"cannot write to output directory {_short(out)}: {problem}; choose a shorter name"
        )
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
    problem = path_problem(target)
    if problem:
        raise OutputError(f"cannot write {_short(target)}: {problem}; choose a shorter name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name must fit too: at most 64 characters of the target's name.
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name[:64]}.", suffix=".tmp"
        )
    except OSError as exc:
        raise OutputError(f"cannot write {_short(target)}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputError(f"cannot write {_short(target)}: {exc.strerror or exc}") from exc
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


def _short(path: Path) -> str:
    """A path for a one-line message: very long ones shortened in the middle."""
    text = str(path)
    return text if len(text) <= 160 else f"{text[:100]}…{text[-50:]}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is just not ours
        return True
    except OSError:
        return False
    return True


class OutputInUseError(OutputError):
    """Another run holds the output folder: two runs writing one folder mix their results."""


LOCK_NAME = ".rmt-deploy.lock"


@contextmanager
def output_lock(folder: str | os.PathLike[str], option: str = "--output") -> Iterator[Path]:
    """Hold `folder/.rmt-deploy.lock` (PID, host, start time; created with O_EXCL) while the
    block runs, and remove it afterwards, also on errors and Ctrl-C.

    A second holder is refused with an OutputInUseError naming the first one's PID. A lock whose
    process is gone (a killed run) is taken over; one from another host is never judged dead
    from here. The takeover renames the stale lock away first, so two runs that both found the
    same dead holder cannot both win."""
    lock = Path(folder) / LOCK_NAME
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for _attempt in range(20):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder is None:  # removed in between, or being written right now
                time.sleep(0.1)
                continue
            if _holder_alive(holder):
                raise OutputInUseError(
                    f"output folder {_short(Path(folder))} is in use by another rmt-deploy run "
                    f"(PID {holder.get('pid')} on {holder.get('host', '?')}, started "
                    f"{holder.get('started', '?')}): wait for it to finish, or give another "
                    f"{option}; if no such run exists, delete {_short(lock)}"
                ) from None
            _remove_stale(lock, holder)
            continue
        except OSError as exc:
            raise OutputError(
                f"cannot create the lock file {_short(lock)}: {exc.strerror or exc}"
            ) from exc
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        break
    else:
        raise OutputInUseError(
            f"could not take the lock {_short(lock)}: other runs keep taking it; give another "
            f"{option}"
        )
    try:
        yield lock
    finally:
        if _read_lock(lock) == record:  # never remove a lock another run has taken over
            lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict | None:
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Written by a holder that died between creating and filling it (or being filled
        # now): a file older than a few seconds is stale.
        try:
            age = dt.datetime.now().timestamp() - lock.stat().st_mtime
        except OSError:
            return None
        return {"pid": -1} if age > 5 else None
    return data if isinstance(data, dict) else {"pid": -1}


def _holder_alive(holder: dict) -> bool:
    host = holder.get("host")
    if host is not None and host != socket.gethostname():
        return True  # another machine (a shared file system): its PIDs mean nothing here
    pid = holder.get("pid")
    return isinstance(pid, int) and pid_alive(pid)


def _remove_stale(lock: Path, holder: dict) -> None:
    aside = lock.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
    try:
        os.replace(lock, aside)
    except FileNotFoundError:
        return  # another run moved it first
    except OSError as exc:
        raise OutputError(f"cannot remove the stale lock {_short(lock)}: {exc}") from exc
    moved = _read_lock(aside)
    if moved not in (holder, None) and _holder_alive(moved):
        # A live run took the lock between our read and the rename: give it back.
        with suppress(OSError):
            os.link(aside, lock)
    aside.unlink(missing_ok=True)
