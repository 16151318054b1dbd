"""The run folder (--out): the files a run writes there, claiming it (a lock held for the run's lifetime, checked
writable, a folder holding another run refused unless resume or overwrite), atomic writes into it, and giving it
back clean (no lock file left; a folder this run created and left empty is removed)."""
import errno
import fcntl
import os
import tempfile

CHECKPOINT_NAME = "checkpoint.pt"
# The checkpoint before the current one, kept beside it (while it verifies): a damaged last file is not a lost run.
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
LOCK_NAME = "fastvae.lock"
# Every file a run writes into its folder (written atomically: a per-process temporary file, then a rename).
RUN_FILES = (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, "config.json", "metrics.csv", "metrics.json", "summary.json",
             "loss_curve.png", "samples.png", "reconstructions.png", "latent.png")


class OutDirError(ValueError):
    """The --out folder cannot take this run: not writable, in use by another run, or holding one."""


class WriteError(OSError):
    """A file of the run could not be written (a full disk, a read-only folder, no permission): its message is one
    line naming the file and the reason; nothing half-written is left."""

    def __str__(self):
        return self.strerror or super().__str__()


class RunLock:
    """The claim of a run folder: the open, flock-ed lock file and the folders claim_out_dir created."""

    def __init__(self, file, path, created):
        self.file, self.path, self.created = file, path, created


def _reason(e):
    """An OSError in words: its strerror and errno name ('No space left on device (ENOSPC)')."""
    name = errno.errorcode.get(e.errno) if e.errno else None
    return f"{e.strerror or e}" + (f" ({name})" if name else "")


def describe_os_error(e):
    """An OSError in one line: the file it names, and the reason ('/x/y: Permission denied (EACCES)')."""
    if isinstance(e, WriteError):
        return str(e)
    return (f"{e.filename}: " if e.filename else "") + _reason(e)


def _missing_parents(out):
    """The folders os.makedirs(out) creates, deepest first."""
    created, d = [], os.path.abspath(out)
    while not os.path.exists(d):
        created.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return created


def _lock(path):
    """Opens and flocks the lock file at path (non-blocking). A lock file that a finishing run unlinked between our
    open and our flock is not the folder's lock any more: then the current one is taken instead."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            return None, pid
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return f, None
        f.close()


def claim_out_dir(out, *, resume=False, overwrite=False):
    """Takes the folder `out` for this process before anything is trained: creates it, locks it (flock on
    LOCK_NAME, which holds this pid: a second run into it is refused, naming the first one's pid; the kernel
    drops the lock when the process ends, crash included), proves that files can be written there, and checks
    that none of RUN_FILES is a folder. A folder that holds a run is refused unless resume (continue it) or
    overwrite (its run files are deleted). Returns the lock; release_out_dir(lock) gives it back."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutDirError(f"out {out!r} is a file; give a folder")
    created = _missing_parents(out)
    try:
        os.makedirs(out, exist_ok=True)
        f, holder = _lock(os.path.join(out, LOCK_NAME))
    except OSError as e:
        _remove_empty(created)
        raise OutDirError(f"out: cannot write into {out!r} ({_reason(e)})") from None
    if f is None:
        raise OutDirError(f"{out} is in use by another fastvae run (pid {holder}); wait for it to end, or give "
                          f"another --out")
    lock = RunLock(f, os.path.join(out, LOCK_NAME), created)
    try:
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        with tempfile.TemporaryFile(dir=out):
            pass
        paths = {name: os.path.join(out, name) for name in RUN_FILES}
        blocked = [p for p in paths.values() if os.path.lexists(p) and not os.path.isfile(p)]
        if blocked:
            raise OutDirError(f"{blocked[0]} is a folder (or not a regular file) where the run writes a file; move "
                              f"it away, or give another --out")
        held = [name for name, p in paths.items() if os.path.isfile(p)]
        if held and not (resume or overwrite):
            raise OutDirError(f"{out} holds a run ({', '.join(held)}); give --resume to continue it, or --overwrite "
                              f"to replace it (or another --out)")
        if overwrite:
            for name in held:
                os.remove(paths[name])
    except OSError as e:
        release_out_dir(lock)
        raise OutDirError(f"out: cannot write into {out!r} ({_reason(e)})") from None
    except BaseException:
        release_out_dir(lock)
        raise
    return lock


def release_out_dir(lock):
    """Gives the folder back: the lock file is removed while still held (a run that opened it meanwhile finds it
    unlinked and takes the new one: see _lock), then closed; the folders claim_out_dir created are removed when
    they are empty (a run that failed before writing anything leaves nothing behind). Best effort: a folder that
    became read-only keeps its lock file, which the next run takes over."""
    try:
        os.remove(lock.path)
    except OSError:
        try:
            lock.file.truncate(0)         # at least no stale pid is ever reported
        except OSError:
            pass
    lock.file.close()
    _remove_empty(lock.created)


def _remove_empty(folders):
    for d in folders:                 # deepest first; stops at the first that holds something
        try:
            os.rmdir(d)
        except OSError:
            break


def atomic_write(path, write, binary=False, keep_previous=None):
    """write(f) into a temporary file next to path (unique to this process), then renamed onto path: a reader never
    sees half a file, and nothing is left behind if writing fails or is interrupted. keep_previous: a path where the
    file path held is kept (a hard link made before the rename: at every moment both names are whole files).
    An OSError becomes a WriteError naming path and the reason."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and os.path.isfile(path):
            _keep(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.lexists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(e.errno, f"cannot write {path}: {_reason(e)}") from None
        raise


def _keep(path, previous):
    """previous becomes a second name of the file at path (a copy where the file system has no hard links)."""
    staged = f"{previous}.{os.getpid()}.tmp"
    if os.path.lexists(staged):
        os.remove(staged)
    try:
        try:
            os.link(path, staged)
        except OSError:
            import shutil
            shutil.copyfile(path, staged)
        os.replace(staged, previous)
    except BaseException:
        if os.path.lexists(staged):
            os.remove(staged)
        raise
