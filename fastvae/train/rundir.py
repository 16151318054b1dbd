"""The run folder (--out): the files a run writes there, claiming it (a lock held for the run's lifetime, checked
writable, a folder holding another run refused unless resume or overwrite), and atomic writes into it."""
import fcntl
import os
import tempfile

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = "fastvae.lock"
# Every file a run writes into its folder (written atomically: a per-process temporary file, then a rename).
RUN_FILES = (CHECKPOINT_NAME, "config.json", "metrics.csv", "metrics.json", "summary.json", "loss_curve.png",
             "samples.png", "reconstructions.png", "latent.png")


class OutDirError(ValueError):
    """The --out folder cannot take this run: not writable, in use by another run, or holding one."""


def claim_out_dir(out, *, resume=False, overwrite=False):
    """Takes the folder `out` for this process before anything is trained: creates it, locks it (flock on
    LOCK_NAME, which holds this pid: a second run into it is refused, naming the first one's pid; the kernel
    drops the lock when the process ends, crash included), proves that files can be written there, and checks
    that none of RUN_FILES is a folder. A folder that holds a run is refused unless resume (continue it) or
    overwrite (its run files are deleted). Returns the lock; release_out_dir(lock) gives it back."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutDirError(f"out {out!r} is a file; give a folder")
    try:
        os.makedirs(out, exist_ok=True)
        lock = open(os.path.join(out, LOCK_NAME), "a+")
    except OSError as e:
        raise OutDirError(f"out: cannot write into {out!r} ({e.strerror or e})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        pid = lock.read().strip() or "unknown"
        lock.close()
        raise OutDirError(f"{out} is in use by another fastvae run (pid {pid}); wait for it to end, or give "
                          f"another --out") from None
    try:
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
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
        raise OutDirError(f"out: cannot write into {out!r} ({e.strerror or e})") from None
    except BaseException:
        release_out_dir(lock)
        raise
    return lock


def release_out_dir(lock):
    """Gives the folder back (the pid is cleared first, so that no stale one is ever reported)."""
    lock.truncate(0)
    lock.close()


def atomic_write(path, write, binary=False):
    """write(f) into a temporary file next to path (unique to this process), then renamed onto path: a reader never
    sees half a file, and nothing is left behind if writing fails or is interrupted."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
