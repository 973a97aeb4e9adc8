"""
The exit boundary of every script: how it ends. Imported first by every script, before torch (whose import alone
takes seconds), so that Ctrl-C at any moment is one line and exit 130.

- import: a KeyboardInterrupt no one handles (during the imports, or before the script's own boundary) reaches
  sys.excepthook, which says "interrupted" and exits 130 (128 + SIGINT, the shell's convention). Python's own ending
  prints a traceback and kills the process with SIGINT (a status of -2 for subprocess, not 130).
- cli(run, errors): a user-facing error becomes one line `error: ...` on stderr and exit 1, Ctrl-C one line and
  exit 130, a closed pipe (`| head`) a quiet exit 0. Never a traceback for any of them. Under torchrun, Ctrl-C and
  an error met before the process group exists (the knob checks, the same on every rank) are said by rank 0 alone.
- run_script(main, argv): the script's `if __name__ == '__main__'`, which ends a run that made a process group
  without tearing it down (its docstring says why).
"""
import errno
import os
import sys


def _hook(kind, value, tb, _default=sys.excepthook):
    if not issubclass(kind, KeyboardInterrupt):
        return _default(kind, value, tb)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):   # a closed or broken stdout: the line on stderr still matters
        pass
    if _RANK0:   # under torchrun every rank is interrupted: one says so
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    os._exit(130)   # at once: nothing was half-written outside cli, and a second Ctrl-C must not start a traceback


sys.excepthook = _hook
_RANK0 = os.environ.get('RANK', '0') == '0'   # torchrun sets RANK; one process is rank 0


def first_line(e):
    """An exception's message as one line (its str can be a paragraph), or its type's name when it has none."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def cli(run, errors, interrupted=None):
    """run(); one of `errors` (or an OSError from files, permissions or a full disk) -> one line `error: ...` on
    stderr and exit 1; Ctrl-C -> one line (`interrupted`, the script's own words) and exit 130."""
    try:
        return run()
    except errors as e:
        sys.stdout.flush()
        dist = sys.modules.get('torch.distributed')   # a script that never imported torch made no group
        if _RANK0 or dist is not None and dist.is_initialized():   # after the group, an error may be one rank's
            print(f"error: {first_line(e)}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:   # the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as e:
        sys.stdout.flush()
        full = " (the disk is full)" if e.errno == errno.ENOSPC else ""
        print(f"error: {str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}{full}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stdout.flush()
        if _RANK0:
            print(interrupted or "interrupted", file=sys.stderr)
        sys.exit(130)


def run_script(main, argv):
    """main(argv), then the process ends with main's exit status. Where the run made a process group (torchrun, or
    parallel='fsdp' in one process) it ends by os._exit after flushing stdout and stderr: no destroy_process_group,
    no interpreter finalization. Why: gloo's worker threads free the tensors of finished collectives, and freeing a
    tensor Python has seen takes the GIL. Destroying the group joins those threads while holding the GIL (a
    deadlock), and a thread that asks for the GIL during finalization is killed inside a destructor (SIGABRT,
    "terminate called without an active exception"; PyTorch issue 190489, docs/parallel.md). Every file the run
    writes is closed by then, and every rank has passed runtime.end_of_run."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        dist = sys.modules.get('torch.distributed')   # a script that never imported torch made no group
        if dist is None or not dist.is_initialized():
            raise
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    dist = sys.modules.get('torch.distributed')
    if dist is not None and dist.is_initialized():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):   # a closed or broken pipe: nothing left to lose
                pass
        os._exit(code)
