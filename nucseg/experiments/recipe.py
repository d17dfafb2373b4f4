"""Run nucseg commands in this process, each logged as the shell line that does the same.

In-process (the Click group itself, not a subprocess) so a test can swap in the tiny backbone
and run the whole protocol; logged as shell lines so `recipe.sh` reads, and runs, as the
recipe. Every step leaves `<output>.step.yaml` beside its output (the line, status, time): a
rerun skips a finished step, resumes an unfinished one, and refuses one that the plan now asks
for with other options.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path


class StepFailed(Exception):
    """A nucseg command exited non-zero (its own message is on stderr already)."""


class Recipe:
    def __init__(self, outdir, dry_run: bool = False, echo=None):
        self.outdir = Path(outdir)
        self.script = self.outdir / "recipe.sh"
        self.dry_run = dry_run
        self.echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
        self.ran: list[list[str]] = []      # commands executed by this process
        self.skipped = 0
        self.written: set[Path] = set()
        self.lines: set[str] = set()            # steps met in this process
        if not dry_run and not self.script.exists():
            self.script.write_text("#!/bin/sh\n# written by bin/reproduce-paper: every nucseg "
                                   "command of this reproduction, in order\nset -e\n",
                                   encoding="utf-8")

    # ------------------------------------------------------------------ the log
    def _write(self, text: str) -> None:
        self.echo(text)
        if not self.dry_run:
            with open(self.script, "a", encoding="utf-8") as fh:
                fh.write(text + "\n")

    def comment(self, text: str) -> None:
        for line in str(text).splitlines() or [""]:
            self._write(f"# {line}".rstrip())

    def write_file(self, path, text: str) -> None:
        """A small input file (a config YAML), logged as the here-document that writes it."""
        path = Path(path)
        if path in self.written or (path.is_file() and path.read_text(encoding="utf-8") == text):
            return
        self.written.add(path)
        self._write(f"mkdir -p {quote(path.parent)} && cat > {quote(path)} <<'EOF'\n"
                    f"{text.rstrip()}\nEOF")
        if not self.dry_run:
            atomic_text(path, text)

    # ------------------------------------------------------------------ the steps
    def step(self, args: list, output, done, resume_args: list | None = None,
             record=None, shared: bool = False, force: bool = False) -> bool:
        """Run `nucseg ARGS` unless its step record says it finished with the same line and
        `done()` agrees; with an unfinished output, run `resume_args` instead (when given).
        `shared`: other steps write into the same output (several imports into one folder);
        `force`: run even if done (its input was just remade). True if it ran."""
        import yaml

        args = [str(a) for a in args]
        line = shlex.join(["nucseg", *args])            # canonical: paths are absolute
        output = Path(output)
        record = Path(record) if record else output.with_name(output.name + ".step.yaml")
        previous = yaml.safe_load(record.read_text(encoding="utf-8")) if record.is_file() \
            else None
        if line in self.lines:                          # a model another row trained
            self._write(f"# reused: {shell_line(args)}")
            return False
        self.lines.add(line)
        if previous and previous.get("command") != line:
            raise ValueError(f"{output} was made by `{previous.get('command')}` but the plan "
                             f"now gives `{line}`; use a new output directory")
        if previous and previous.get("status") == "finished" and done() and not force:
            self.skipped += 1
            self._write(f"# done before: {shell_line(args)}")
            return False
        if previous is None and not shared and has_content(output) and not self.dry_run:
            raise ValueError(f"{output} exists but no step record says how it was made "
                             f"({record.name}); remove it or use a new output directory")
        resume = bool(resume_args) and has_content(output)
        run = [str(a) for a in resume_args] if resume else args
        self._write(shell_line(run))
        if self.dry_run:
            return True
        entry = {"command": line, "status": "running",
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if resume:
            entry["resumed_with"] = shlex.join(["nucseg", *run])
        atomic_text(record, yaml.safe_dump(entry, sort_keys=False))
        start = time.monotonic()
        code = call_nucseg(run)
        entry.update(status="finished" if code == 0 else "failed", exit_status=code,
                     seconds=round(time.monotonic() - start, 1))
        atomic_text(record, yaml.safe_dump(entry, sort_keys=False))
        self.ran.append(run)
        if code == 130:
            raise KeyboardInterrupt(line)
        if code:
            raise StepFailed(f"`{shell_line(run)}` exited with status {code}")
        return True


def call_nucseg(args: list[str]) -> int:
    """`nucseg ARGS` through the Click group in this process; its exit status."""
    import click

    from nucseg.cli import main

    try:
        main.main(args=list(args), prog_name="nucseg", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    finally:
        release_models()
    return code


def release_models() -> None:
    """Free the Keras graphs of the last command, so a long protocol does not grow."""
    if "keras" in sys.modules:
        import gc

        sys.modules["keras"].backend.clear_session()
        gc.collect()


def has_content(path: Path) -> bool:
    """A file, or a directory holding more than nucseg's lock file."""
    if path.is_dir():
        return any(p.name != ".nucseg.lock" for p in path.iterdir())
    return path.exists()


def shell_line(args) -> str:
    return "nucseg " + " ".join(quote(a) for a in args)


def quote(value) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    text = str(value)
    if os.path.isabs(text):
        try:
            relative = os.path.relpath(text)
            if not relative.startswith(".."):
                text = relative
        except ValueError:
            pass
    return shlex.quote(text)


def atomic_text(path, text: str) -> None:
    from nucseg.io import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
