"""Keep TensorFlow's native log lines off the user's terminal.

TF 2.21's C++ runtime writes INFO/WARNING lines (oneDNN, CUDA probing, grappler cost estimates
for CropAndResize) straight to file descriptor 2 before it reads TF_CPP_MIN_LOG_LEVEL, so a
pipeline's stderr would drown the one `error:` line that matters. The console entry point routes
fd 2 through a thread that drops lines in absl's log format; `NUCSEG_TF_LOGS=1` keeps them.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading

TF_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|To enable the following instructions: )")


def drop_tf_lines(data: bytes) -> bytes:
    """The text with every complete TF log line removed (other bytes untouched)."""
    pieces = re.split(rb"(?<=\n)", data)
    return b"".join(p for p in pieces if not TF_LOG_LINE.match(p))


def filter_native_logs() -> None:
    """Route fd 2 through a filter for the rest of the process (no-op if NUCSEG_TF_LOGS=1)."""
    if os.environ.get("NUCSEG_TF_LOGS") == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    terminal = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump():
        pending = b""
        with os.fdopen(read_fd, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                pending += chunk
                # pass through up to the last line or progress-bar boundary; keep the rest
                cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
                if cut:
                    os.write(terminal, drop_tf_lines(pending[:cut]))
                    pending = pending[cut:]
        if pending:
            os.write(terminal, drop_tf_lines(pending))

    thread = threading.Thread(target=pump, name="nucseg-stderr-filter", daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=2)

    atexit.register(restore)
