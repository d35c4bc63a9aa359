"""The project code each DVC stage runs, against the code it declares in dvc.yaml.

For every stage of ``dvc.yaml`` (``foreach`` stages included) the script its ``cmd`` runs
(``python stages/x.py ...`` or ``python -m package.module ...``) is read with ``ast``, and
so is every project module it imports, transitively: every ``import`` and ``from ... import``
anywhere in a file (function-level imports included), relative imports resolved. Importing
``rdfa.io.keys`` runs ``rdfa/__init__.py`` and ``rdfa/io/__init__.py`` first, so those count
too. A module is a project module when it resolves to a file under the project root (the
script's own folder first, as Python puts it first on ``sys.path``, then the root); NumPy,
h5py and the standard library do not. Folders a stage loads at run time, which no import names
(``plugins/``: the methods stage imports every ``*.py`` in it), are listed in
``RUNTIME_FOLDERS``.

    python tools/stage_deps.py --check    # per stage: gaps (run, not declared), extras
                                          # (declared, not run); exit 1 on any
    python tools/stage_deps.py --write    # rewrite the code entries of each stage's deps:

Only code entries are compared and rewritten: ``.py`` files, the run-time folders, and folders
of Python files (a package's folder, which declares more than the files run). Data
deps (``data/${item}``, ``features/...``) are left as they are, in their order; ``--write``
puts the code entries, sorted, first in each ``deps:`` list and keeps every other line of the
file (comments, formatting) as it is.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: Folders a stage loads at run time (every ``*.py`` in it), by stage name.
RUNTIME_FOLDERS = {"methods": ("plugins",), "distractors": ("plugins",)}


class StageDepsError(ValueError):
    """dvc.yaml or a stage's command that this tool cannot read."""


# --------------------------------------------------------------------------- the import walk


def _resolve(name: str, search: list[Path]) -> Path | None:
    """The file of module ``name`` (``a/b/c.py`` or ``a/b/c/__init__.py``) under the first
    folder of ``search`` that has it; None for a module outside the project."""
    parts = name.split(".")
    for base in search:
        stem = base.joinpath(*parts)
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _with_parents(name: str, search: list[Path]) -> list[tuple[str, Path]]:
    """``name`` and its parent packages (``a``, ``a.b``, ``a.b.c``): each is run on import."""
    parts = name.split(".")
    found = []
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        path = _resolve(prefix, search)
        if path is None:
            break  # a parent outside the project: so is the rest
        found.append((prefix, path))
    return found


def _package_of(module: str, path: Path) -> str:
    """The package a relative import in ``module`` (stored at ``path``) is relative to."""
    if path.name == "__init__.py":
        return module
    return module.rpartition(".")[0]


def imported_modules(module: str, path: Path, search: list[Path]) -> list[tuple[str, Path]]:
    """The project modules (name, file) that running ``path`` (module ``module``) imports
    directly, parent packages included, in the order they appear."""
    key = (module, path, tuple(search))
    if key not in _IMPORTS:  # each stage walks much the same modules
        _IMPORTS[key] = _imported_modules(module, path, search)
    return _IMPORTS[key]


_IMPORTS: dict = {}


def _imported_modules(module: str, path: Path, search: list[Path]) -> list[tuple[str, Path]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise StageDepsError(f"{path}: not valid Python ({e.msg}, line {e.lineno})") from e
    found: list[tuple[str, Path]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += _with_parents(alias.name, search)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                if not base:
                    raise StageDepsError(f"{path}, line {node.lineno}: relative import beyond the top-level package")
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            mods = _with_parents(target, search)
            found += mods
            if mods and mods[-1][0] == target:
                # ``from package import name``: name may be a submodule, which is then imported too.
                for alias in node.names:
                    if alias.name != "*":
                        sub = _resolve(f"{target}.{alias.name}", search)
                        if sub is not None:
                            found.append((f"{target}.{alias.name}", sub))
    return found


def walk(script: Path, root: Path, module: str = "__main__") -> set[Path]:
    """Every project file that running ``script`` runs: itself and its imports, transitively."""
    search = [script.parent.resolve(), root.resolve()]
    seen: dict[Path, str] = {script.resolve(): module}
    todo = [(module, script.resolve())]
    while todo:
        mod, path = todo.pop()
        for name, dep in imported_modules(mod, path, search):
            dep = dep.resolve()
            if dep not in seen:
                seen[dep] = name
                todo.append((name, dep))
    return set(seen)


# --------------------------------------------------------------------------- dvc.yaml


@dataclass
class Stage:
    name: str
    cmd: str
    deps: list[str]


def load_stages(dvc_yaml: Path) -> list[Stage]:
    doc = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    stages = []
    for name, body in (doc.get("stages") or {}).items():
        body = body.get("do", body)
        cmd = body.get("cmd")
        if isinstance(cmd, list):
            cmd = " && ".join(cmd)
        if not cmd:
            raise StageDepsError(f"{dvc_yaml}: stage {name} has no cmd")
        stages.append(Stage(name, cmd, [str(d) for d in body.get("deps") or []]))
    return stages


def stage_script(stage: Stage, root: Path) -> tuple[Path, str]:
    """The Python file a stage's command runs, and the module name it runs under."""
    words = shlex.split(stage.cmd)
    for i, word in enumerate(words[:-1]):
        if re.fullmatch(r"python[\d.]*", Path(word).name):
            nxt = words[i + 1]
            if nxt == "-m" and i + 2 < len(words):
                path = _resolve(words[i + 2], [root])
                if path is None:
                    raise StageDepsError(f"stage {stage.name}: module {words[i + 2]} not found under {root}")
                return path, words[i + 2]
            path = root / nxt
            if not path.is_file():
                raise StageDepsError(f"stage {stage.name}: {nxt} (from its cmd) not found under {root}")
            return path, "__main__"
    raise StageDepsError(f"stage {stage.name}: no `python <script>` in its cmd {stage.cmd!r}")


def is_code(dep: str, root: Path) -> bool:
    """A code dep (compared and generated): a .py file, a run-time folder, or a folder of Python
    files (``rdfa/methods``: declaring a package's folder declares more than the files run)."""
    dep = dep.rstrip("/")
    if dep.endswith(".py") or any(dep in folders for folders in RUNTIME_FOLDERS.values()):
        return True
    folder = root / dep
    return "${" not in dep and folder.is_dir() and next(folder.rglob("*.py"), None) is not None


def code_deps(stage: Stage, root: Path) -> list[str]:
    """The code deps a stage must declare, sorted: the files it runs, and its run-time folders."""
    script, module = stage_script(stage, root)
    root = root.resolve()
    files = {p.relative_to(root).as_posix() for p in walk(script, root, module)}
    return sorted(files | set(RUNTIME_FOLDERS.get(stage.name, ())))


def compare(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Per stage: (gaps, extras): code run but not declared, code declared but not run."""
    out = {}
    for stage in load_stages(root / "dvc.yaml"):
        wanted = set(code_deps(stage, root))
        declared = {d.rstrip("/") for d in stage.deps if is_code(d, root)}
        out[stage.name] = (sorted(wanted - declared), sorted(declared - wanted))
    return out


def report(result: dict[str, tuple[list[str], list[str]]]) -> tuple[str, int]:
    lines = []
    gap_files: set[str] = set()
    n_gaps = n_extras = 0
    for name, (gaps, extras) in result.items():
        if not gaps and not extras:
            lines.append(f"{name}: ok")
            continue
        lines.append(f"{name}: {len(gaps)} gaps, {len(extras)} extras")
        lines += [f"  gap:   {g}" for g in gaps]
        lines += [f"  extra: {e}" for e in extras]
        n_gaps += len(gaps)
        n_extras += len(extras)
        gap_files.update(gaps)
    lines.append(f"total: {n_gaps} gaps ({len(gap_files)} distinct files), {n_extras} extras, "
                 f"{len(result)} stages")
    return "\n".join(lines), n_gaps + n_extras


# --------------------------------------------------------------------------- --write


def rewrite(text: str, wanted: dict[str, list[str]], root: Path) -> str:
    """dvc.yaml's text with each stage's code deps replaced by ``wanted[stage]`` (sorted, first in
    its ``deps:`` list); data deps, comments and every other line kept as they are."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    in_stages = False  # inside the top-level `stages:` block
    stage_indent = None  # indentation of the stage names in it (that of its first key)
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        body = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if body and not body.startswith("#"):
            if indent == 0:
                in_stages, stage_indent, stage = body == "stages:", None, None
            elif in_stages and indent == (stage_indent or indent):
                stage_indent, stage = indent, body.rstrip(":").strip()
        if stage in wanted and body == "deps:":
            out.append(line)
            i += 1
            items: list[str] = []  # the kept lines of the list: data deps and comments
            item_indent = None
            while i < len(lines):
                nxt = lines[i]
                s = nxt.strip()
                ind = len(nxt) - len(nxt.lstrip(" "))
                if s and not s.startswith("#") and (ind < indent or (ind == indent and not s.startswith("- "))):
                    break  # the next key
                if s.startswith("- "):
                    item_indent = ind
                    if not is_code(s[2:].split(" #")[0].strip().strip("'\""), root):
                        items.append(nxt)
                elif not s and (i + 1 == len(lines) or not lines[i + 1].strip().startswith("- ")):
                    break  # a blank line ending the list
                else:
                    items.append(nxt)
                i += 1
            pad = " " * (item_indent if item_indent is not None else indent + 2)
            out += [f"{pad}- {dep}\n" for dep in wanted[stage]]
            out += items
            continue
        out.append(line)
        i += 1
    return "".join(out)


def write(root: Path) -> str:
    path = root / "dvc.yaml"
    wanted = {s.name: code_deps(s, root) for s in load_stages(path)}
    text = rewrite(path.read_text(encoding="utf-8"), wanted, root)
    path.write_text(text, encoding="utf-8")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="print gaps and extras per stage; exit 1 on any")
    mode.add_argument("--write", action="store_true", help="rewrite the code entries of each stage's deps")
    parser.add_argument("--root", type=Path, default=ROOT, help="project root holding dvc.yaml (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.write:
            write(args.root)
        text, n = report(compare(args.root))
    except StageDepsError as e:
        print(f"stage_deps: {e}", file=sys.stderr)
        return 2
    print(text)
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
