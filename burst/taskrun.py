"""What runs on the workers for a task (a function or a command), and the scheduler's attempt
counter.

Shipped by value (cloudpickle.register_pickle_by_value): the nodes have no copy of burst,
only the standard library, boto3 and distributed. So this module imports nothing from burst
and nothing else at the top level.

A task runs in a scratch folder of its own: `work/` (the current directory, holding links to
the job's files) and `output/` ($BURST_OUTPUT, uploaded to the cluster's bucket when the
command succeeds). The job's code and inputs are fetched from S3 once per worker into a
read-only cache ($BURST_INPUT holds the inputs).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

TAIL_BYTES = 2048
TAIL_LINES = 20


def format_argv(tokens: list[str], row: dict[str, Any]) -> list[str]:
    """Each token of the split template is formatted on its own: a value is never parsed by a
    shell, so 'x; touch pwned' stays one literal argument."""
    return [token.format(**row) for token in tokens]


def tail_of(text: str) -> str:
    return "\n".join(text[-TAIL_BYTES:].splitlines()[-TAIL_LINES:])


def tail(path: Path) -> str:
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        stream.seek(max(0, stream.tell() - TAIL_BYTES))
        return tail_of(stream.read().decode("utf-8", errors="replace"))


class _TailBuffer:
    """What one task printed, bounded: only the tail is ever reported."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text = (self.text + text)[-2 * TAIL_BYTES :]


class _ThreadRouter:
    """Stands in for sys.stdout or sys.stderr in a worker process: what a task's thread writes
    goes to that task's buffer, everything else to the real stream. Log records that reach
    the stream (Python's default for warnings and above, or the task's own basicConfig) are
    captured with it."""

    _burst_router = True

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffers: dict[int, _TailBuffer] = {}

    def write(self, text: str) -> int:
        buffer = self.buffers.get(threading.get_ident())
        (buffer or self.stream).write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, isatty, ...
        return getattr(self.stream, name)


def _router(name: str) -> _ThreadRouter:
    """sys.stdout or sys.stderr, routed; installed once per worker process."""
    # The lock lives on sys, not in this module: shipped by value, the module's globals are
    # pickled with each task, and a lock cannot be (dict.setdefault is atomic under the GIL).
    with sys.__dict__.setdefault("_burst_router_lock", threading.Lock()):
        stream = getattr(sys, name)
        if not getattr(stream, "_burst_router", False):  # by attribute: shipped by value,
            stream = _ThreadRouter(stream)  # this class is a new object in every unpickling
            setattr(sys, name, stream)
        return stream


class _Timeout(Exception):
    """Raised inside a task's thread when its time is up."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Interrupt the calling thread after `seconds`, at its next Python instruction (a long
    call into C, such as one numpy operation, finishes first). Threads cannot be killed: this
    raises an exception in the thread, through CPython's PyThreadState_SetAsyncExc."""
    if seconds is None:
        yield
        return
    thread = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    state = {"running": True, "fired": False}

    def expire() -> None:
        with lock:
            if state["running"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(thread, ctypes.py_object(_Timeout))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except _Timeout:
        raise TimeoutError(f"timed out after {seconds:g}s") from None
    finally:
        timer.cancel()
        with lock:
            state["running"] = False
            if state["fired"]:  # not raised yet: clear it, so it cannot hit the worker later
                ctypes.pythonapi.PyThreadState_SetAsyncExc(thread, None)
    if state["fired"]:
        raise TimeoutError(f"timed out after {seconds:g}s")


class FunctionTask:
    """Callable on a worker with one task's input: the job's function, timed, with what it
    printed captured for this task alone, and stopped after `timeout` seconds.

    Returns {"value", "seconds", "worker", "stdout_tail", "stderr_tail"}. An exception the
    function raises is deterministic (running it again gives the same): unless
    `retry_exceptions`, it comes back as a value, {"error": text, ...}, so that Dask does not
    retry it; a timeout, or any exception with `retry_exceptions`, is raised (Dask's retries
    apply) and carries the tails in its `burst_output` attribute (pickled with it)."""

    def __init__(
        self,
        function: Any,
        timeout: float | None = None,
        retry_exceptions: bool = False,
        sources: dict[str, str] | None = None,
    ):
        self.function = function
        self.timeout = timeout
        self.retry_exceptions = retry_exceptions
        # The job's module files by path: a worker without them still shows the failing line.
        self.sources = sources or {}

    def __call__(self, task: Any) -> dict[str, Any]:
        streams = {"stdout": _router("stdout"), "stderr": _router("stderr")}
        buffers = {name: _TailBuffer() for name in streams}
        me = threading.get_ident()
        for name, router in streams.items():
            router.buffers[me] = buffers[name]
        started = time.perf_counter()
        try:
            with _time_limit(self.timeout):
                value = self.function(task)
        except _Timeout as stopped:  # raised just outside the time limit's own handler
            error = TimeoutError(f"timed out after {self.timeout:g}s")
            error.burst_output = _tails(buffers)
            error.burst_error = self.failure_text(error, where=stopped)  # where it was stopped
            raise error from None
        except TimeoutError as error:  # burst's time limit, or the function's own: retried
            error.burst_output = _tails(buffers)
            stopped = error.__context__ if isinstance(error.__context__, _Timeout) else None
            error.burst_error = self.failure_text(error, where=stopped)
            raise
        except Exception as error:
            if self.retry_exceptions:
                error.burst_output = _tails(buffers)
                error.burst_error = self.failure_text(error)
                raise
            return {
                "error": self.failure_text(error),
                "seconds": time.perf_counter() - started,
                "worker": _worker_name(),
                **_tails(buffers),
            }
        except BaseException as error:
            error.burst_output = _tails(buffers)
            raise
        finally:
            for router in streams.values():
                router.buffers.pop(me, None)
        return {
            "value": value,
            "seconds": time.perf_counter() - started,
            "worker": _worker_name(),
            **_tails(buffers),
        }

    def failure_text(self, error: BaseException, where: BaseException | None = None) -> str:
        return failure_text(error, where=where, sources=self.sources)


def _worker_name() -> str | None:
    from distributed import get_worker

    try:
        return get_worker().name
    except ValueError:  # called outside a worker
        return None


def failure_text(
    error: BaseException,
    frames: int = 8,
    where: BaseException | None = None,
    sources: dict[str, str] | None = None,
) -> str:
    """'Type: message', then where it was raised (or, for a timeout, where the function was
    when it was stopped: `where`'s traceback): the last `frames` frames below the task's own
    call, each at the user's file and line. cloudpickle ships the job's code by value with
    `<dynamic-code>` as every code object's file name; the function's globals keep the
    module's `__file__`, which names the file again. Its lines come from `sources` (the job's
    files as the client read them), else from the file where it exists."""
    import contextlib
    import linecache
    import traceback

    walked = list(traceback.walk_tb((where or error).__traceback__))
    ours = (__name__, contextlib.__name__)  # FunctionTask and its time limit: not the user's
    while walked and walked[0][0].f_globals.get("__name__") in ours:
        walked.pop(0)
    found = []
    for frame, lineno in walked:
        filename = frame.f_code.co_filename
        if filename == "<dynamic-code>":
            filename = frame.f_globals.get("__file__") or filename
        if filename in (sources or {}):
            lines = sources[filename].splitlines()
            line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else None
        else:
            line = linecache.getline(filename, lineno).strip() or None
        found.append(
            traceback.FrameSummary(
                filename, lineno, frame.f_code.co_name, lookup_line=False, line=line
            )
        )
    where = "".join(traceback.StackSummary.from_list(found[-frames:]).format())
    return f"{type(error).__name__}: {error}\n{where}".strip()


def _tails(buffers: dict[str, _TailBuffer]) -> dict[str, str]:
    return {f"{name}_tail": tail_of(b.text) for name, b in buffers.items() if b.text}


def _extract(archive: Path, folder: Path) -> None:
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(folder, filter="data")  # no absolute paths, links out, devices
        except TypeError:  # a Python without extraction filters (before 3.11.4)
            tar.extractall(folder)


def _read_only(root: Path, shared: bool = False) -> None:
    """Best effort (root ignores it): tasks must not change what other tasks read. `shared`:
    readable by every user (the task user's, whatever modes the job's files had)."""
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if path.is_file():
            mode &= ~0o222
            if shared:  # readable by all, and executable by all if its owner could run it
                mode |= 0o444 | (0o111 if mode & 0o100 else 0)
            path.chmod(mode)
        else:
            path.chmod(0o555)


def _fingerprint(root: Path) -> dict[str, list[int]]:
    """Size, mtime and inode of every file: enough to notice a task that wrote an input."""
    found = {}
    for path in root.rglob("*"):
        if not path.is_symlink():
            stat = path.stat()
            found[path.relative_to(root).as_posix()] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    return found


def _writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o700)


# The unprivileged user command tasks run as, when the node agent was given one (--task-user:
# on EC2 the boot script creates it and firewalls it off the metadata service). The agent
# passes it to its worker process in this variable, which a task never inherits (BURST_NODE_).
TASK_USER_VARIABLE = "BURST_NODE_TASK_USER"


def task_user() -> tuple[str, int, int] | None:
    """(name, uid, gid) of the task user this worker was given, or None (tasks run as the
    worker's own user: the sandbox, where every instance is one local user)."""
    import pwd

    name = os.environ.get(TASK_USER_VARIABLE)
    if not name:
        return None
    entry = pwd.getpwnam(name)  # a missing user is an error: never fall back to the worker's
    if entry.pw_uid == os.getuid():
        raise RuntimeError(f"the task user {name!r} is the worker's own user")
    return name, entry.pw_uid, entry.pw_gid


def _private_folder(path: Path) -> Path:
    """A folder only this process's user writes (others may pass through, not list it). In a
    shared /tmp it must not be somebody else's (or a link) made in advance."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o711)
    found = path.lstat()
    if not path.is_dir() or path.is_symlink() or found.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not this worker's own folder")
    path.chmod(0o711)
    return path


# What a command task never inherits from its worker: the node's AWS settings (credentials,
# the metadata service's endpoint, the sandbox's API endpoint) and Dask's (which can name the
# node's TLS key). botocore in the task is told not to look for an instance role either.
SCRUBBED_PREFIXES = ("AWS_", "DASK_", "BURST_NODE_")


def task_environment(inherited: dict[str, str]) -> dict[str, str]:
    """The environment a command task starts from: the worker's, without its credentials."""
    kept = {k: v for k, v in inherited.items() if not k.upper().startswith(SCRUBBED_PREFIXES)}
    kept["AWS_EC2_METADATA_DISABLED"] = "true"
    return kept


class CommandTask:
    """Callable on a worker with (index, row): run the command, upload its outputs.

    config: bucket, region, prefix, job_id, argv (template tokens), timeout (seconds or
    None), code (key of the job files' tar.gz), inputs (list of {name, kind, bucket, key}).
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def _s3(self):
        import boto3

        return boto3.client("s3", region_name=self.config["region"])

    def fetch(self, base: Path) -> Path:
        """The job's code and inputs on this worker, fetched once (the first task waits)."""
        cache = base / f"cache-{self.config['job_id']}"
        done = cache / ".complete"
        if done.exists():
            return cache
        base.mkdir(parents=True, exist_ok=True)
        with open(base / f"cache-{self.config['job_id']}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # other task threads of this worker wait here
            if done.exists():
                return cache
            if cache.exists():  # a fetch that failed half-way
                _writable(cache)
                shutil.rmtree(cache)
            s3 = self._s3()
            (cache / "inputs").mkdir(parents=True)
            with tempfile.TemporaryDirectory(dir=base) as download:
                archive = Path(download) / "code.tar.gz"
                s3.download_file(self.config["bucket"], self.config["code"], str(archive))
                _extract(archive, cache / "code")
                for item in self.config["inputs"]:
                    target = cache / "inputs" / item["name"]
                    if item["kind"] == "tar":
                        archive = Path(download) / f"{item['name']}.tar"
                        s3.download_file(item["bucket"], item["key"], str(archive))
                        _extract(archive, cache / "inputs")
                        archive.unlink()
                    else:  # one object: a local file uploaded by the client, or an s3:// input
                        s3.download_file(item["bucket"], item["key"], str(target))
            shared = task_user() is not None
            _read_only(cache / "code", shared)
            _read_only(cache / "inputs", shared)
            done.write_text(json.dumps(_fingerprint(cache)))
        return cache

    def fetched(self, base: Path) -> tuple[Path, dict[str, list[int]]]:
        """The cache, and the fingerprint of its files as fetched."""
        while True:
            cache = self.fetch(base)
            try:
                return cache, json.loads((cache / ".complete").read_text())
            except (OSError, ValueError):
                continue  # invalidated just now by another task: fetch afresh

    def check_unchanged(self, cache: Path, before: dict[str, list[int]]) -> str | None:
        """Root ignores read-only modes. When the shared inputs or job files changed while a
        task ran, which task wrote them cannot be told apart: every task that ran meanwhile
        fails (retries apply), and the next task on this worker fetches a fresh copy."""
        now = _fingerprint(cache)
        now.pop(".complete", None)
        changed = sorted(set(before) ^ set(now) | {k for k in before if now.get(k) != before[k]})
        if not changed:
            return None
        (cache / ".complete").unlink(missing_ok=True)
        return (
            f"the read-only {changed[0]!r} changed while this task ran (this task or another "
            "on the same worker wrote to it; write to $BURST_OUTPUT instead)"
        )

    def __call__(self, item: tuple[int, dict[str, Any]]) -> dict[str, Any]:
        from distributed import get_worker

        index, row = item
        worker = get_worker()
        user = task_user()
        local = Path(worker.local_directory)
        if user is None:
            base = local / "burst"
        else:  # beside, not in, Dask's folder (spilled data), which stays the worker's alone
            base = _private_folder(Path(tempfile.gettempdir()) / f"burst-tasks-{local.name}")
        cache, fingerprint = self.fetched(base)
        scratch = Path(tempfile.mkdtemp(prefix=f"task-{index}-", dir=base))
        try:
            return self._run(index, row, cache, fingerprint, scratch, worker.name, user)
        finally:
            _writable(scratch)
            shutil.rmtree(scratch, ignore_errors=True)

    def _run(
        self,
        index: int,
        row: dict[str, Any],
        cache: Path,
        fingerprint: dict[str, list[int]],
        scratch: Path,
        worker: str,
        user: tuple[str, int, int] | None = None,
    ) -> dict[str, Any]:
        work, output = scratch / "work", scratch / "output"
        work.mkdir()
        output.mkdir()
        as_user: dict[str, Any] = {}
        if user is not None:
            # The task user owns its two folders; the scratch folder, with the captured
            # output, stays the worker's (the task may pass through it, not replace files).
            name, uid, gid = user
            scratch.chmod(0o711)
            for folder in (work, output):
                os.chown(folder, uid, gid)
            as_user = {"user": uid, "group": gid, "extra_groups": []}
        code = cache / "code"
        if code.exists():
            for entry in code.iterdir():
                (work / entry.name).symlink_to(entry)
        argv = format_argv(self.config["argv"], row)
        if "/" not in argv[0] and (code / argv[0]).is_file():
            argv[0] = str(work / argv[0])  # a program that ships with the job
        env = {
            **task_environment(os.environ),
            "BURST_JOB": self.config["job_id"],
            "BURST_TASK": str(index),
            "BURST_INPUT": str(cache / "inputs"),
            "BURST_OUTPUT": str(output),
            # `python` is the node's Python, with the job's software
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        }
        if user is not None:  # not the worker's home or temporary folder
            env.update(HOME=str(work), TMPDIR=str(work), USER=user[0], LOGNAME=user[0])
        timeout = self.config.get("timeout")
        cause, code_ = None, None
        started = time.monotonic()
        with open(scratch / "stdout", "wb") as out, open(scratch / "stderr", "wb") as err:
            try:
                process = subprocess.Popen(
                    argv,  # no shell: the template was split before formatting
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # so a timeout kills its children too
                    **as_user,
                )
            except OSError as error:
                cause = f"could not start {argv[0]!r}: {error.strerror or error}"
            else:
                try:
                    code_ = process.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    cause = f"timed out after {timeout:g}s"
                except BaseException:  # cancelled: do not leave the command running
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    raise
        seconds = time.monotonic() - started
        record = {
            "argv": argv,
            "exit_code": code_,
            "stdout_tail": tail(scratch / "stdout"),
            "stderr_tail": tail(scratch / "stderr"),
        }
        if cause is None:
            cause = self.check_unchanged(cache, fingerprint)
        if cause is None and code_ != 0:
            cause = (
                f"killed by signal {-code_}"
                if code_ is not None and code_ < 0
                else f"exit code {code_}"
            )
        if cause is not None:
            # A builtin exception travels to the client without burst on either side; its
            # second argument carries the details for the manifest.
            raise RuntimeError(cause, {**record, "cause": cause, "worker": worker})
        record["outputs"], record["sha256"] = self._upload(output, index, user)
        return {"value": record, "seconds": seconds, "worker": worker}

    def _upload(
        self, output: Path, index: int, user: tuple[str, int, int] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """Each file under `output` to outputs/<index>/ in the bucket: the names, and each
        file's SHA-256, by which the client tells that what it downloads is what this task
        wrote (the bucket is shared by every task of the job).

        Each file is opened without following a link, and with a task user only a file that
        user owns is sent: a process the task left behind may swap a file or a folder for a
        link to the worker's key between the listing and the upload, or hard-link it."""
        # Not through symlinks: a task must not copy the node's own files into the results.
        files = sorted(
            p
            for p in output.rglob("*")
            if p.is_file()
            and not any((output / part).is_symlink() for part in _prefixes(p.relative_to(output)))
        )
        if not files:
            return [], {}
        import hashlib

        s3 = self._s3()
        names, digests = [], {}
        for path in files:
            name = path.relative_to(output).as_posix()
            key = f"{self.config['prefix']}/outputs/{index}/{name}"
            try:
                descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:  # swapped for a link, or gone, since the listing
                continue
            with os.fdopen(descriptor, "rb") as stream:
                if user is not None and os.fstat(descriptor).st_uid != user[1]:
                    continue  # not the task's own file
                digests[name] = hashlib.file_digest(stream, "sha256").hexdigest()
                stream.seek(0)
                s3.upload_fileobj(stream, self.config["bucket"], key)
            names.append(name)
        return names, digests


def _prefixes(relative: Path) -> list[Path]:
    """a/b/c -> a, a/b, a/b/c"""
    return [Path(*relative.parts[: n + 1]) for n in range(len(relative.parts))]


class AttemptCounter(SchedulerPlugin):
    """Counts, on the scheduler, how often each task was handed to a worker: a retry after an
    error, or a rerun after a lost worker, is one more attempt."""

    name = "burst-attempts"

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing":
            self.attempts[str(key)] = self.attempts.get(str(key), 0) + 1


def attempts_on(dask_scheduler) -> dict[str, int]:
    plugin = dask_scheduler.plugins.get(AttemptCounter.name)
    return dict(plugin.attempts) if plugin else {}
