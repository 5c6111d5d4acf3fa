"""Every command and code block in README.md and docs/ runs as written.

Names drift (a check renamed, an argument respelled) and a reader copies the docs, not the
tests; so the docs' blocks are the tests. Fenced blocks are read by their info string:

* ``python``: run in order, one namespace per Markdown file (a page reads top to bottom);
* ``bash``/``sh``/``shell``: every line a command (``\\`` continues a line, ``#`` comments);
* ``console``: the lines after a ``$ `` prompt are commands, the rest is shown output;
* anything else (no info string, ``text``, ``json``, ``latex``) is output and is not run.

A block whose fence is preceded by the line ``<!-- slow: REASON -->`` (say, one that builds the
peer's private environment, minutes of downloads) runs with the slow cases (``-m slow``).

Commands run as a user runs them, from the top of a checkout, but one whose outputs land in a
fresh temporary directory: it links every top-level entry of the repository (docs/, README.md,
the packages), so ``python docs/reproductions/x.py`` runs and ``--out results/`` writes into
the temporary directory. This interpreter's ``bin/`` is first on PATH, so ``limitlab`` is the
installed one. The README's two set-up commands create a virtual
environment: here their install step is replaced by this environment (which CI made with the
same ``pip install``), and ``test_readme_commands_from_a_fresh_clone`` (slow) runs them
literally on a fresh clone. A line that needs hardware this machine lacks says so in a
trailing comment (``# needs a CUDA GPU``) and is skipped only where there is none.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
# `python3 -m venv .venv && .venv/bin/pip install ... &&`: the README's set-up prefix
SETUP = re.compile(r"^python3? -m venv (?P<venv>\S+) && (?P=venv)/bin/pip install [^&]*&& ")
GPU_NOTE = "# needs a CUDA GPU"


SLOW_NOTE = re.compile(r"<!--\s*slow:[^>]*-->\s*$")


def blocks(page: Path, with_slow: bool = False):
    """(language, first line number, body[, slow]) of every fenced block of ``page``."""
    text = page.read_text()
    for m in FENCE.finditer(text):
        lang = m.group("info").strip().split()[0].lower() if m.group("info").strip() else ""
        line = text.count("\n", 0, m.start()) + 2
        if with_slow:
            yield lang, line, m.group("body"), bool(SLOW_NOTE.search(text[:m.start()].rstrip() + " "))
        else:
            yield lang, line, m.group("body")


def commands(lang: str, body: str) -> list:
    """(line offset, command) of a bash or console block (continuations joined, comments dropped)."""
    out, cur, start = [], "", 0
    for k, raw in enumerate(body.splitlines()):
        line = raw.rstrip()
        if lang == "console" and not cur:
            if not line.startswith("$ "):
                continue  # shown output
            line = line[2:]
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not cur:
            start = k
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append((start, (cur + line).strip()))
        cur = ""
    return out


def _has_gpu() -> bool:
    from limitlab.verify.backend import get_backend

    for name in ("torch", "cupy"):
        try:
            if get_backend(name).device is not None:
                return True
        except Exception:
            pass
    return False


def _cases():
    cases = []
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        py = [(line, body) for lang, line, body, _ in blocks(page, True) if lang == "python"]
        slow_py = any(slow for lang, _, _, slow in blocks(page, True) if lang == "python")
        if py:
            cases.append(pytest.param(page, "python", py, id=f"{rel}:python",
                                      marks=[pytest.mark.slow] if slow_py else []))
        for lang, line, body, slow in blocks(page, True):
            if lang in ("bash", "sh", "shell", "console"):
                cmds = [(line + k, cmd) for k, cmd in commands(lang, body)]
                if cmds:  # one case a block: its commands run in order in one directory, as a reader runs them
                    cases.append(pytest.param(page, "shell", cmds, id=f"{rel}:{line}:{cmds[0][1][:50]}",
                                              marks=[pytest.mark.slow] if slow else []))
    return cases


CASES = _cases()


def _env(tmp_path):
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = ""
    return env


def _checkout(tmp_path: Path) -> Path:
    """A directory that reads like the repository's top level and writes into tmp_path."""
    for entry in ROOT.iterdir():
        if entry.name in (".git",) or entry.name.startswith(".venv") or entry.name in (
                "limitlab-report", "limitlab-reproductions"):
            continue
        (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def _local(cmd: str) -> str | None:
    """The command as it runs in this environment: the README's set-up prefix replaced by the
    environment the tests run in; None for the test command itself (it is running now)."""
    m = SETUP.match(cmd)
    if m:
        cmd = cmd[m.end():]
    # the README's virtual environment is, here, the one the tests run in
    cmd = re.sub(r"(?<![\w./-])\.venv/bin/", f"{BIN}/", cmd)
    if re.search(r"(^|/)python3? -m pytest\b|(^|\s)pytest\b", cmd):
        return None
    return cmd


def test_the_docs_have_blocks_to_run():
    # guards the extraction itself: a broken fence pattern would make every case vanish
    langs = [lang for page in PAGES for lang, _, _ in blocks(page)]
    assert langs.count("python") >= 5 and sum(lang in ("bash", "console") for lang in langs) >= 3
    assert any("limitlab verify" in cmd for c in CASES if c.values[1] == "shell" for _, cmd in c.values[2])


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    cmd = [c for _, _, b in blocks(ROOT / "README.md") for _, c in commands("bash", b) if "pytest" in c]
    assert len(cmd) == 1, "the README has exactly one test command"
    pytest_part = cmd[0].split("&&")[-1].strip().split("/bin/", 1)[-1]  # python -m pytest ...
    assert pytest_part in (ROOT / ".ci" / "run").read_text(), (pytest_part, readme)


@pytest.mark.parametrize("page,kind,payload", CASES)
def test_doc_block_runs_as_written(page, kind, payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if kind == "python":
        ns = {"__name__": "__doc_block__"}
        import matplotlib

        matplotlib.use("Agg")
        for line, body in payload:
            code = compile(body, f"{page.name}:{line}", "exec")
            try:
                exec(code, ns)
            except Exception as exc:
                raise AssertionError(f"{page.name} line {line}: the python block fails: "
                                     f"{type(exc).__name__}: {exc}\n{body}") from exc
        return
    cwd, ran = _checkout(tmp_path), 0
    for line, cmd in payload:
        if GPU_NOTE in cmd and not _has_gpu():
            continue  # needs a CUDA GPU, and this machine has none
        local = _local(cmd)
        if local is None:
            continue  # the test command itself: it is what is running now
        r = subprocess.run(["bash", "-c", local], cwd=cwd, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=600, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (f"{page.name} line {line}: `{cmd}` exited {r.returncode}\n"
                                   f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
        ran += 1
    if not ran:
        pytest.skip("every command of this block needs what this machine lacks, or is the test command")


@pytest.mark.slow
def test_readme_commands_from_a_fresh_clone(tmp_path):
    """The README's two commands, literally, in a fresh clone (a new venv, a real pip install)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    cmds = [c for _, _, b in blocks(ROOT / "README.md") for _, c in commands("bash", b) if SETUP.match(c)]
    assert len(cmds) == 2
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for cmd in cmds:
        if "pytest" in cmd:  # the whole suite inside the suite: collect it all (imports, markers), run none
            cmd = cmd + " --collect-only"
        r = subprocess.run(["bash", "-c", cmd], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, f"`{cmd}` exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
