"""Every ``ufm`` command shown in README.md runs as shown.

The commands are the lines of README code blocks (fenced with no language or a shell one, or indented) that start
with ``ufm `` or ``$ ufm ``. In a block that uses ``$`` prompts only the prompt lines are commands and the rest is
output; a block without prompts is a list of commands only if every line in it looks like one (``ufm``, ``pip``,
``python`` or a comment), so printed tables are never run. Lines starting with ``pip install`` are skipped, and so
is everything else that is not a ``ufm`` command. ``a && b`` runs b only after a succeeds, as the shell would.

Each command runs through ``python -m ufm`` in one temporary folder shared by the whole README, so a command may read
what an earlier one wrote (``ls.npz``, ``origin.npz``). Commands run a few at a time, each after every earlier command
whose files it reads or writes.

Conventions inside the README (a trailing shell comment on the command line):

- ``# (long)``: too slow for the test suite; skipped, and so is every later command that reads a file it writes;
- ``# (exit N)``: the command is expected to exit with status N instead of 0.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Optional

import pytest

#: every README command is a fresh `ufm` process (each imports JAX and compiles): a multi-process end-to-end run,
#: in the slow tier with the experiments (CI runs it: `python3 -m pytest -m slow`)
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
#: wall-clock limit of one README command (below the suite's per-test ceiling of 300 s in pyproject.toml)
COMMAND_TIMEOUT_S = 240
#: flags whose value is a file the command writes, and flags whose value is a file it reads
OUTPUT_FLAGS = ("--save", "--store", "--export", "-o", "--output")
INPUT_FLAGS = ("--config", "--W", "--H", "--labels", "--b")


@dataclasses.dataclass(frozen=True)
class Command:
    line: int                       # 1-based line number in README.md
    text: str                       # the command as shown, without prompt and comment
    parts: tuple                    # argv lists of the `&&`-chained ufm commands
    expected: int
    long: bool

    @property
    def writes(self) -> set:
        return {v for argv in self.parts for v in _flag_values(argv, OUTPUT_FLAGS)}

    @property
    def reads(self) -> set:
        files = set()
        for argv in self.parts:
            files |= _flag_values(argv, INPUT_FLAGS)
            if argv[:2] == ["ufm", "plot"]:                      # ufm plot KIND RESULT… : the results are inputs
                files |= set(_positionals(argv[3:]))
            if argv[:2] == ["ufm", "analyze"] and len(argv) > 2 and not argv[2].startswith("-"):
                files.add(argv[2])                                # ufm analyze FILE …: the README puts FILE first
        return files


def _flag_values(argv, flags) -> set:
    return {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags}


def _positionals(args):
    """Arguments that are neither flags nor flag values (every ufm plot flag takes one value)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = "=" not in a
        else:
            out.append(a)
    return out


SHELL_FENCES = ("", "sh", "bash", "shell", "console", "shell-session")
COMMAND_LIKE = ("ufm ", "ufm\t", "pip ", "python", "#")


def _code_blocks(lines):
    """(first line number, lines) of every shell-like fenced block and every indented block outside fences."""
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence:
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence.group(1)):
                body.append(lines[i])
                i += 1
            if fence.group(2).lower() in SHELL_FENCES:
                yield start, body
        elif line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            start, body = i + 1, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            yield start, body
            continue
        i += 1


def readme_commands(path=README) -> list[Command]:
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    commands = []
    for start, body in _code_blocks(lines):
        prompts = any(l.lstrip().startswith("$ ") for l in body)
        if not prompts and not all(l.strip().startswith(COMMAND_LIKE) for l in body if l.strip()):
            continue                                         # output, a table, a file listing: nothing to run
        for offset, raw in enumerate(body):
            text = raw.strip()
            if prompts:
                if not text.startswith("$ "):
                    continue
                text = text[2:].strip()
            if not text.startswith("ufm "):
                continue                                     # pip install …, python …, output lines
            comment = ""
            if " #" in text:
                text, comment = text.split(" #", 1)
                text = text.strip()
            parts = tuple(shlex.split(p) for p in text.split("&&"))
            if not all(p and p[0] == "ufm" for p in parts):
                continue                                     # a chain that runs something other than ufm
            m = re.search(r"\(exit (\d+)\)", comment)
            commands.append(Command(line=start + offset, text=text, parts=parts,
                                    expected=int(m.group(1)) if m else 0, long="(long)" in comment))
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 5
    assert any(c.parts[0][:2] == ["ufm", "solve"] for c in COMMANDS)


def test_every_file_a_command_reads_is_written_earlier():
    """A README command that reads a file no earlier command writes cannot run as shown."""
    written = set()
    for c in COMMANDS:
        missing = c.reads - written
        assert not missing, f"README line {c.line}: `{c.text}` reads {sorted(missing)}, which no earlier command writes"
        written |= c.writes


#: README commands run concurrently, this many at a time (each process spends most of its time in single-threaded
#: imports, tracing and compilation), each only after every earlier command whose files it reads or writes
WORKERS = max(1, min(4, os.cpu_count() or 1))


def _plan(commands):
    """Which commands are skipped (and why), and which earlier commands each one must wait for."""
    skipped, skipped_files = {}, set()
    for i, c in enumerate(commands):
        if c.long:
            skipped[i] = f"README line {c.line} is marked (long)"
        elif c.reads & skipped_files:
            skipped[i] = f"README line {c.line} reads {sorted(c.reads & skipped_files)} from a command marked (long)"
        else:
            continue
        skipped_files |= c.writes
    deps = {i: [j for j in range(i) if j not in skipped and (commands[j].writes & (c.reads | c.writes)
                                                           or commands[j].reads & c.writes)]
            for i, c in enumerate(commands)}
    return skipped, deps


SKIPPED, DEPS = _plan(COMMANDS)


@dataclasses.dataclass
class Outcome:
    argv: list
    returncode: Optional[int]      # None: timed out, or not run because a command it needs failed
    stdout: str = ""
    stderr: str = ""
    wall: float = 0.0
    note: str = ""


def _run(cmd: Command, workdir, needs) -> Outcome:
    for future in needs:
        if not _succeeded(future.result()):
            return Outcome(list(cmd.parts[0]), None, note="an earlier README command it needs failed")
    env = _environment()
    for argv in cmd.parts:
        t0 = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, "-m", "ufm", *argv[1:]], cwd=workdir, env=env, capture_output=True,
                               text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Outcome(argv, None, wall=time.perf_counter() - t0,
                           note=f"ran past {COMMAND_TIMEOUT_S} s; mark it `# (long)` in the README or make it faster")
        out = Outcome(argv, r.returncode, r.stdout, r.stderr, time.perf_counter() - t0)
        want = cmd.expected if argv is cmd.parts[-1] else 0
        if r.returncode != want or want != 0:
            return out                                       # `a && b`: b runs only if a exited 0
    return out


#: a private folder for the sockets of `ufm serve`, so that the README's server is this test's own (stopped at the end)
RUNTIME = tempfile.mkdtemp(prefix="ufm-readme-rt-")


def _environment() -> dict:
    return dict(os.environ, MPLBACKEND="Agg", XDG_RUNTIME_DIR=RUNTIME,
                PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def _succeeded(outcome: Outcome) -> bool:
    return outcome.returncode == 0


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Start every runnable README command in one shared temporary folder; yield their futures by index."""
    workdir = tmp_path_factory.mktemp("readme")
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    futures = {}
    for i, cmd in enumerate(COMMANDS):                      # in README order: a command's needs are submitted first
        if i not in SKIPPED:
            futures[i] = pool.submit(_run, cmd, workdir, [futures[j] for j in DEPS[i]])
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    subprocess.run([sys.executable, "-m", "ufm", "serve", "--stop"], env=_environment(), capture_output=True,
                   timeout=60)


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[f"L{c.line}-{c.parts[0][1]}" for c in COMMANDS])
def test_readme_command_runs_as_shown(index, outcomes):
    cmd = COMMANDS[index]
    if index in SKIPPED:
        pytest.skip(SKIPPED[index])
    out = outcomes[index].result()
    want = cmd.expected if out.argv is cmd.parts[-1] else 0
    assert out.returncode == want, (
        f"README line {cmd.line}: `{shlex.join(out.argv)}` exited {out.returncode} ({out.note or f'{out.wall:.1f} s'}); "
        f"the README shows {want}\n--- stdout ---\n{out.stdout[-2000:]}\n--- stderr ---\n{out.stderr[-2000:]}")
