"""What the bad-import tests assert about a command's result: the project's rule for bad input
(one `error: <file>: <problem>` line, the exit code, no traceback, nothing left behind)."""
import re
from pathlib import Path

from click.testing import CliRunner

from nucseg.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(result) -> list[str]:
    """The `error: ...` lines of stderr (progress bars redraw with \\r, so split on it too)."""
    return [part.strip() for part in re.split(r"[\r\n]", result.stderr)
            if part.strip().startswith("error:")]


def assert_refused(result, bad, problem: str, exit_code: int) -> str:
    """Exit code, no traceback, exactly one `error: <bad>: ...` line holding `problem`."""
    assert result.exc_info is None or result.exc_info[0] is SystemExit, (
        "uncaught exception", result.exc_info, result.output)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    mine = [line for line in error_lines(result) if line.startswith(f"error: {bad}: ")]
    assert len(mine) == 1, (bad, result.stderr)
    assert problem in mine[0], (problem, mine[0])
    return mine[0]


def files_under(directory: Path) -> set[str]:
    """Every file below `directory` (temporary `.*.part*` files included), relative names."""
    if not directory.exists():
        return set()
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
