"""What every job does around its work: quiet libraries, one line for a problem the user can fix,
the summary lines on success."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import Callable

from caspar.config import check, field_types
from caspar.errors import UserError
from caspar.runtime import QUIET_ENVIRONMENT, private_defaults
from caspar.tracking import mlflow_message

# Lines that TensorFlow (absl, C++), Ray and MLflow write straight to the stderr file descriptor,
# bypassing Python's logging: on a CPU-only machine they look like errors but are not. Native error
# lines (E....) pass, but for the one every CPU-only machine prints.
NATIVE_NOISE = re.compile(
    rb"^([IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    rb"|E\d{4} [\d:.]+ +\d+ cuda_(platform|executor|driver)\.cc:\d+\] failed call to cuInit"  # no GPU: not an error here
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|Successfully registered model '|Created version '\d+' of model |Registered model '.*' already exists"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\tINFO "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\tWARNING authentication_token_setup\.py:\d+ -- Token authentication is enabled)")
# What every start of TensorFlow prints on a CPU-only machine, hidden even with --verbose: it says nothing
# about the run (oneDNN's notice, no CUDA driver, absl's start, cuInit failing where there is no GPU).
STARTUP_NOISE = re.compile(
    rb"^(I\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard|cuda_executor|cuda_dnn|cuda_fft|cuda_blas)\.cc:\d+\]"
    rb"|E\d{4} [\d:.]+ +\d+ cuda_(platform|executor|driver)\.cc:\d+\] failed call to cuInit"
    rb"|E\d{4} [\d:.]+ +\d+ util\.cc:\d+\] oneDNN supports DT_BOOL only on platforms with AVX-512"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|To enable the following instructions: .* in other operations, rebuild TensorFlow)")
# Set as a job starts, so that every process it spawns (Ray's workers, MLflow's) inherits them.
private_defaults()


class Interrupted(Exception):
    """The job was interrupted (Ctrl-C) and has cleaned up; `lines` say what it kept."""

    def __init__(self, lines: list[str]):
        super().__init__(lines[-1] if lines else "interrupted")
        self.lines = lines


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt: the job cleans up as after Ctrl-C (its MLflow run ends KILLED)."""


@contextlib.contextmanager
def terminated_as_interrupt():
    """While the block runs in the main thread, SIGTERM raises Terminated there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, stop)
    # A process started in the background of a script inherits SIGINT ignored: a SIGINT sent to it
    # (Ctrl-C reaches only the foreground) would then do nothing and the run would never end KILLED.
    interrupt = signal.getsignal(signal.SIGINT)
    if interrupt == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, interrupt)


@contextlib.contextmanager
def library_lines():
    """The library's INFO lines (its progress and what it did: loggers caspar.*) printed bare on
    standard output as they come; outside a job they reach nobody unless the caller asks."""
    logger = logging.getLogger("caspar")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, whatever handlers Ray or MLflow put on the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def run(job: str, work: Callable[[], list[str]], verbose: bool = False) -> int:
    """Runs a job's work as the shell does: the library's progress lines printed as they come, the
    work's lines at its end, or one `job: error: ...` line.

    Args:
        job: the job's name, the prefix of its error lines.
        work: the job itself, returning the lines it prints at its end.
        verbose: the libraries' own log lines and tracebacks (hidden without it).

    Returns:
        The exit code: 0; 2 for a UserError or an output that cannot be written; 1 when MLflow
        failed or the disk or memory ran out; 130 interrupted (Ctrl-C); 143 SIGTERM.
    """
    quiet = quiet_libraries(STARTUP_NOISE, {}) if verbose else quiet_libraries()
    with quiet, terminated_as_interrupt(), library_lines():
        try:
            lines = work()
        except UserError as error:
            print(f"{job}: error: {error}", file=sys.stderr)
            return 2
        except Interrupted as stop:
            for line in stop.lines:
                print(line, flush=True)
            return 130
        except Terminated:
            print(f"{job}: stopped (SIGTERM)", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print(f"{job}: interrupted", file=sys.stderr)
            return 130
        except OSError as error:  # an output that cannot be written (read-only, disk full, no permission)
            if verbose:
                raise
            where = f"{error.filename}: " if error.filename else ""
            # an error that names no file says where it was raised, so that the line names something
            place = "" if error.filename else f" (raised in {raised_in(error)}; --verbose shows the traceback)"
            print(f"{job}: error: {where}{error.strerror or error}{place}", file=sys.stderr)
            return 2
        except Exception as error:
            problem = None if verbose else out_of_resources(error)
            if problem:  # disk full or memory exhausted, wherever it happened (a Ray worker, TensorFlow)
                print(f"{job}: error: {problem}", file=sys.stderr)
                return 1
            mlflow_errors = sys.modules.get("mlflow.exceptions")  # only jobs that track import MLflow
            if mlflow_errors is None or not isinstance(error, mlflow_errors.MlflowException):
                raise
            print(f"{job}: error: MLflow: {mlflow_message(error)}", file=sys.stderr)
            return 1
    for line in lines:
        print(line, flush=True)
    return 0


def raised_in(error: BaseException) -> str:
    """Where an error was raised.

    Args:
        error: a raised exception.

    Returns:
        "file.py:line in function" of its innermost frame, or "an unknown place" without a traceback.
    """
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    return f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}"


def out_of_resources(error: BaseException) -> str | None:
    """One line when the disk or the memory ran out, anywhere in the error's chain (a Ray task's
    error carries its worker's as `cause`; TensorFlow raises ResourceExhaustedError for both).

    Args:
        error: what the job raised.

    Returns:
        The line, or None for any other error.
    """
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        text = str(current)
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
            where = getattr(current, "filename", None)
            return f"no space left on the device{f' writing {where}' if where else ''}; free some space and run again"
        if isinstance(current, MemoryError) or type(current).__name__ in ("OutOfMemoryError", "ResourceExhaustedError"):
            detail = next((line.strip() for line in text.splitlines() if line.strip()), type(current).__name__)
            return f"out of memory ({detail[:160]}): use smaller sizes (--hidden-layers, --batch-size) or a larger machine"
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


@contextlib.contextmanager
def quiet_libraries(noise: re.Pattern = NATIVE_NOISE, environment: dict | None = None):
    """Hides the libraries' own log lines while the block runs.

    Args:
        noise: the lines C++ code writes directly to file descriptor 2 that are dropped.
        environment: quieter log levels set (inherited by Ray's workers; QUIET_ENVIRONMENT if None).

    Yields:
        None, while the block runs.
    """
    environment = QUIET_ENVIRONMENT if environment is None else environment
    saved_environment = {k: os.environ.get(k) for k in environment}
    for key, value in environment.items():
        os.environ.setdefault(key, value)
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    real_stderr = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    target_fd = os.dup(real_stderr)  # here, not in the thread: the block may end before the thread runs

    def pump():
        with os.fdopen(read_end, "rb") as source, os.fdopen(target_fd, "wb") as target:
            for line in source:
                if not noise.match(line):
                    target.write(line)
                    target.flush()

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # child processes may still hold the pipe: do not wait for its end
        os.close(real_stderr)
        pumping.join(timeout=0.5)
        for key, value in saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- Command lines from the configurations (caspar.config) ----------------------------------------------------------

class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # "(default: …)" only where there is a default to show
        if action.required or action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message) -> None:
        """One line, not argparse's usage block.

        Args:
            message: argparse's message.
        """
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser_for(cls, description: str) -> argparse.ArgumentParser:
    """A job's command line from its config's fields.

    Args:
        cls: the job's config dataclass (each field's metadata: its help and allowed values).
        description: the job's --help text.

    Returns:
        The parser: an option per field, and --verbose.
    """
    job = os.path.splitext(os.path.basename(sys.argv[0]))[0]  # "train": the prefix of every error line of the job
    parser = _Parser(prog=job, description=description, formatter_class=_Formatter)
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, types[f.name]
        option = f"--{f.name.replace('_', '-')}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if kind is bool:
            parser.add_argument(option, action="store_true", help=meta["help"])
        elif typing.get_origin(kind) is list:
            parser.add_argument(option, type=typing.get_args(kind)[0], nargs="+", default=default, help=meta["help"])
        else:
            parser.add_argument(option, type=kind, default=default, choices=meta["choices"], help=meta["help"],
                                required=meta["required"])
    parser.add_argument("--verbose", action="store_true", help="also TensorFlow's and Ray's own log lines")
    return parser


def parse(cls, description: str, argv=None):
    """A job's options from the command line, every value checked before any work starts (a
    refused one: one line, exit 2).

    Args:
        cls: the job's config dataclass.
        description: the job's --help text.
        argv: the arguments (sys.argv[1:] if None).

    Returns:
        (configuration, verbose).
    """
    parser = parser_for(cls, description)
    args = vars(parser.parse_args(argv))
    verbose = args.pop("verbose")
    config = cls(**args)
    try:
        check(config)
    except UserError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    return config, verbose
