"""Run a parameterised notebook headless, strictly: `python -m attrlib.nbrun NB OUT -p k v`.

papermill with two guarantees its command line lacks:
- A parameter the notebook does not declare is an error listing the notebook's parameters,
  raised before anything runs (papermill only warns and runs the notebook's default, so a
  typo such as `-p matchng ewa` silently runs another experiment).
- The kernel dies with this process. The kernel is started in a session of its own, so a
  killed `make` recipe used to leave it training and writing into the run folder until its
  parent poller noticed, a second later; on Linux the kernel now asks the system to kill it
  the instant its parent exits (PR_SET_PDEATHSIG), which survives the kernel's exec.
  Ctrl-C or SIGTERM ends this process at once, and with it the kernel: papermill would
  interrupt the kernel and wait for it to shut down, printing the interrupted cell's
  KeyboardInterrupt while the kernel goes on writing. The executed notebook of an
  interrupted run is not written (make keeps only a finished one anyway).

Parameter values are read like papermill's `-p` (True/False/None, int, float, else str);
`-y` takes a YAML mapping.

The terminal shows the run's log: papermill's lines and the kernel's output, every line
prefixed with the run's name (`[distill/x2-kd-s0] epoch 3/30 ...`), so the lines of a
parallel make say whose they are. A failing cell prints its traceback there, and a run that
succeeded prints no error (see BoundKernelManager).

Under `torchrun --nproc_per_node=N -m attrlib.nbrun --rank-output NB OUT ...` each of the N
ranks is one runner with its own kernel executing the whole notebook; the kernel inherits
the runner's environment (jupyter_client starts it with a copy of os.environ), so the
notebook's stage sees torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT
and joins the other ranks' kernels in one process group (attrlib.distributed). Only rank 0
writes OUT; every other rank executes into a hidden file beside it that is deleted
afterwards. torchrun fails if any rank fails, so OUT is kept only when all finished.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import papermill as pm
import yaml
import zmq
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

_BOUND = "--bound-kernel"
_PR_SET_PDEATHSIG = 1
KERNEL_START_TIMEOUT = 300  # seconds a new kernel may take to answer
KERNEL_STARTS = 3  # kernels started at most, when one dies before answering


def _inspect(path: str | Path) -> dict[str, dict]:
    """papermill's reading of the notebook's cell tagged `parameters`: name -> its fields."""
    logger = logging.getLogger("papermill")  # inspecting logs "Input Notebook" once more
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        return pm.inspect_notebook(str(path))
    finally:
        logger.setLevel(level)


def notebook_parameters(path: str | Path) -> dict[str, Any]:
    """The notebook's declared parameters, name -> default (its cell tagged `parameters`)."""
    return {name: p["default"] for name, p in _inspect(path).items()}


def parameter_listing(path: str | Path) -> str:
    """The notebook's parameters, one line each: name = default  # the cell's comment."""
    inferred = _inspect(path)
    width = max((len(f"{p['name']} = {p['default']}") for p in inferred.values()), default=0)
    lines = [f"{path}: parameters (pass with -p NAME VALUE, lists with -y 'NAME: [...]')"]
    for p in inferred.values():
        text = f"{p['name']} = {p['default']}"
        lines.append(f"  {text:<{width}}  # {p['help']}" if p["help"] else f"  {text}")
    return "\n".join(lines)


class UnknownParameterError(ValueError):
    """A parameter the notebook does not declare."""


def check_parameters(path: str | Path, names) -> None:
    """Raise UnknownParameterError naming every parameter `path` does not declare, and those it does."""
    declared = notebook_parameters(path)
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise UnknownParameterError(
            f"{path}: unknown parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; the notebook's parameters are: {', '.join(declared)}"
        )


class BoundKernelManager(AsyncKernelManager):
    """A kernel manager for headless runs: its kernels are killed by the system when this
    process exits, talk to it encrypted where they can, and end without a false error."""

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        return [sys.executable, "-m", "attrlib.nbrun", _BOUND, *cmd]

    @default("transport_encryption")
    def _encrypt_where_possible(self) -> str:
        # a kernel on plain TCP warns at every start ("Kernel is running over TCP without
        # encryption"); CurveZMQ keys for kernelspecs that declare them (ipykernel's does)
        # remove the cause, and the warning with it
        return "auto" if zmq.has("curve") else "disabled"

    async def _async_interrupt_kernel(self) -> None:
        # jupyter_client interrupts every kernel it shuts down, in case a cell still runs.
        # papermill shuts down only after the notebook's last reply, when no cell runs: the
        # SIGINT then lands in the kernel's handling of that reply, which logs
        # "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." after a run that
        # succeeded. The shutdown request alone ends the kernel (and a kernel that ignores
        # it is killed after the shutdown wait). Interrupts at any other time are kept.
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()


def _exec_bound(cmd: list[str]) -> None:
    """Become `cmd`, to be SIGKILLed as soon as the process that launched us exits."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # the launcher may already be gone (then we were re-parented before the call)
        parent = os.environ.get("JPY_PARENT_PID")
        if parent and os.getppid() != int(parent):
            sys.exit("notebook runner exited before its kernel started")
    os.execv(cmd[0], cmd)


def execute(
    notebook: str | Path,
    output: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    log_output: bool = True,
    progress_bar: bool = False,
    cwd: str | Path | None = None,
) -> None:
    """Check `parameters` against `notebook`, then execute it into `output` (papermill).

    With `log_output`, what the kernel prints (stdout, stderr) goes to the "papermill" logger
    as it comes; what a cell displays (tables, figures) stays in the executed notebook, where
    it reads better than as text in a make log.
    """
    parameters = parameters or {}
    check_parameters(notebook, parameters)
    streams = (
        {"stdout_file": _LogStream(logging.INFO), "stderr_file": _LogStream(logging.WARNING)}
        if log_output
        else {}
    )
    for attempt in range(1, KERNEL_STARTS + 1):
        try:
            pm.execute_notebook(
                str(notebook),
                str(output),
                parameters=parameters,
                progress_bar=progress_bar,
                cwd=None if cwd is None else str(cwd),
                kernel_manager_class=BoundKernelManager,
                # papermill's 60 s: a kernel importing torch beside a busy grid (four DDP
                # ranks on two cores) was measured to take longer to answer its first request
                start_timeout=KERNEL_START_TIMEOUT,
                **streams,
            )
            return
        except RuntimeError as e:
            # a kernel that dies before its first reply ran no cell: starting another is safe
            # (seen once among four grid runs starting side by side; cause not found)
            if "before replying to kernel_info" not in str(e) or attempt == KERNEL_STARTS:
                raise
            logging.getLogger("papermill").warning(
                "the kernel died while starting (%s); starting another (%d of %d)",
                e,
                attempt + 1,
                KERNEL_STARTS,
            )


class _LogStream:
    """A file papermill writes a kernel stream to, relayed to its logger at `level`."""

    def __init__(self, level: int) -> None:
        self.level = level

    def write(self, text: str) -> None:
        logging.getLogger("papermill").log(self.level, text)

    def flush(self) -> None:
        pass


def run_name(output: str | Path, rank: str | None = None) -> str:
    """The name on a run's log lines: the executed notebook's folder below its runs folder
    (the nearest folder above that holds the profile.yaml make writes there), such as
    `teacher` or `distill/x2-kd-s0`; elsewhere the folder's last two names. A torchrun rank
    other than 0 adds ` rank <k>`."""
    folder = Path(output).absolute().parent
    runs = next((d for d in folder.parents if (d / "profile.yaml").is_file()), None)
    name = folder.relative_to(runs).as_posix() if runs else "/".join(folder.parts[-2:])
    return name if rank in (None, "0") else f"{name} rank {rank}"


class _RunLines(logging.Formatter):
    """Every line of a record as its own line prefixed `[name] `, as a terminal shows it.

    papermill logs each output the kernel sends as one record: several lines, a trailing
    newline (which would print a blank line), or carriage-return redraws of a progress bar
    that did not come from attrlib.progress (only the last redraw of a line is kept).
    """

    def __init__(self, name: str) -> None:
        super().__init__("%(message)s")
        self.prefix = f"[{name}] "

    def format(self, record: logging.LogRecord) -> str:
        lines = super().format(record).strip("\r\n").split("\n")
        lines = (line.rstrip().rsplit("\r", 1)[-1] for line in lines)
        return "\n".join(f"{self.prefix}{line}".rstrip() for line in lines)


# papermill's bookkeeping (a pair of lines per cell, the notebooks' paths) and the text form
# of a figure a cell displays: nothing a reader of a make log needs
_NOISE = re.compile(
    r"(Executing|Ending) Cell \d+-*|Input Notebook: .*|Output Notebook: .*"
    r"|Executing notebook with kernel: .*|<Figure size [^>]*>"
)


def _worth_showing(record: logging.LogRecord) -> bool:
    text = record.getMessage().strip()
    return bool(text) and not _NOISE.fullmatch(text)


def log_as(name: str) -> None:
    """Log this runner (papermill's lines and the kernel's output it relays) to stderr, each
    line prefixed with the run's `name`, blank records and papermill's per-cell bookkeeping
    dropped: several runs of a parallel make interleave line by line, each saying whose."""
    handler = logging.StreamHandler()
    handler.setFormatter(_RunLines(name))
    handler.addFilter(_worth_showing)
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def parse_value(text: str) -> Any:
    """A `-p` value as papermill reads it."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@contextmanager
def rank_output(output: Path, rank: str | None) -> Iterator[Path]:
    """Where this torchrun rank writes its executed notebook: `output` on rank 0 (or without
    torchrun, `rank` None), else `.rank<k>-<name>` beside it, removed afterwards (a killed
    rank's copy is left there, hidden, and overwritten by the next attempt)."""
    if rank in (None, "0"):
        yield output
        return
    discarded = output.with_name(f".rank{rank}-{output.name}")
    try:
        yield discarded
    finally:
        discarded.unlink(missing_ok=True)


def _exit_now(signum: int, frame) -> None:
    print(f"attrlib.nbrun: {signal.Signals(signum).name}, stopped with the kernel", file=sys.stderr)
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [_BOUND]:
        _exec_bound(argv[1:])
    if sys.platform.startswith("linux"):  # elsewhere papermill's own shutdown stops the kernel
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _exit_now)
    parser = argparse.ArgumentParser(prog="python -m attrlib.nbrun", description=__doc__)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("output", type=Path, nargs="?", help="the executed copy to write")
    parser.add_argument(
        "--params", action="store_true", help="list the notebook's parameters and defaults"
    )
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE")
    )
    parser.add_argument("-y", "--yaml", action="append", default=[], help="a YAML mapping")
    parser.add_argument("--progress-bar", action="store_true")
    parser.add_argument(
        "--rank-output",
        action="store_true",
        help="under torchrun: only rank 0 (env RANK) keeps OUTPUT, the other ranks discard theirs",
    )
    args = parser.parse_args(argv)
    if args.params:
        print(parameter_listing(args.notebook))
        return 0
    if args.output is None:
        parser.error("the output notebook is required (or --params to list the parameters)")
    parameters: dict[str, Any] = {}
    for text in args.yaml:
        mapping = yaml.safe_load(text)
        if not isinstance(mapping, dict):
            parser.error(f"-y {text!r}: expected a YAML mapping of parameter names to values")
        parameters.update(mapping)
    parameters.update({name: parse_value(value) for name, value in args.parameter})
    rank = os.environ.get("RANK") if args.rank_output else None  # set by torchrun
    log_as(run_name(args.output, rank))
    try:
        with rank_output(args.output, rank) as output:
            execute(args.notebook, output, parameters, progress_bar=args.progress_bar)
    except UnknownParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except pm.PapermillExecutionError as e:
        # the failing cell's traceback, named like the run's other lines; the runner's own
        # traceback through papermill would add nothing to it
        logging.getLogger("papermill").error(str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
