"""The `nucseg` command line: parse options, call library functions, report errors.

No logic lives here; each command is a thin function over a library call that the tests call
directly. Library errors (`nucseg.io.InputError`, `ValueError`) become one `error:` line and a
non-zero exit. One module per group of stages; importing them registers their commands.
"""
from nucseg.cli import models, multitask, predicting, scoring, slides, stages, training  # noqa
from nucseg.cli.common import finish_batch, friendly_errors, main

__all__ = ["main", "run", "friendly_errors", "finish_batch"]


def stop_signals_interrupt() -> None:
    """SIGTERM (kill, job schedulers, container runtimes) and SIGINT stop a command the way
    Ctrl-C does: KeyboardInterrupt, so `train` keeps its newest checkpoint and records the
    run as interrupted. A process started in the background by a shell script inherits SIGINT
    as ignored; that is undone here, so `kill -INT` works too."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run():
    """Console entry point: the Click group with TensorFlow's native log lines filtered."""
    from nucseg.cli.native_logs import filter_native_logs

    stop_signals_interrupt()
    filter_native_logs()
    main()
