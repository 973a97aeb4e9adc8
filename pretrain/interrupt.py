"""
Ctrl-C at any moment of a script ends with one line on stderr and exit status 130 (128 + SIGINT, the shell's
convention), never a traceback. Every script imports this module first, before torch, whose import alone takes
seconds: a KeyboardInterrupt that no one handles (during the imports, or between them and the script's own error
boundary, configurator.cli) reaches sys.excepthook, which says "interrupted" and exits 130. Inside cli the script
says what was kept instead.

Python's own ending for an unhandled KeyboardInterrupt prints the traceback and kills the process with SIGINT
(a status of -2 for subprocess, not 130), which is why this hook exists.
"""
import os
import sys


def _hook(kind, value, tb, _default=sys.excepthook):
    if not issubclass(kind, KeyboardInterrupt):
        return _default(kind, value, tb)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):   # a closed or broken stdout: the line on stderr still matters
        pass
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)   # at once: nothing was half-written outside cli, and a second Ctrl-C must not start a traceback


sys.excepthook = _hook
