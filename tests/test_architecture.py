"""The package's structure: import graph, file sizes, config reads and documented settings."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from audit.config import KEYS, SECTIONS, defaults, resolve

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "audit"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return out


def _imports(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (function-level imports too)."""
    package = name if file.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names]
            # ``from audit import artifacts`` depends on the module, as ``import audit.artifacts`` does;
            # ``from audit import explain`` (a name) depends on the package's __init__
            targets = names if all(n in modules for n in names) else [base] + names
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, file, modules) for name, file in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module names, first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    assert _cycle(_graph()) is None


def test_metrics_and_report_never_import_a_stage():
    """Stages use the trust metrics and feed the report; arrows never point back up."""
    back = sorted(f"{m} -> {d}" for m, deps in _graph().items() for d in deps
                  if m.startswith(("audit.trust", "audit.report")) and d.startswith("audit.stages"))
    assert back == []


def test_only_the_pipeline_knows_dask_and_the_report_tensorflow_free():
    for name, file in _modules().items():
        text = file.read_text()
        if name != "audit.pipeline":
            assert not re.search(r"^\s*(import dask|from dask|from distributed|import distributed)", text, re.M), name
        if name.startswith(("audit.report", "audit.nightly", "audit.config", "audit.findings")):
            assert "tensorflow" not in text and "import keras" not in text, name


def test_no_file_is_longer_than_the_limit():
    long = {str(f.relative_to(ROOT)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert long == {}


# ---------------------------------------------------------------- config reads

def _config_reads(file: Path) -> list[tuple[int, str]]:
    """``(line, dotted key)`` of every ``config.<a>[.<b>]`` read in ``file``."""
    reads = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "config":
            reads.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
              and isinstance(node.value.value, ast.Name) and node.value.value.id == "config"):
            reads.append((node.lineno, f"{node.value.attr}.{node.attr}"))
    return reads


CONFIG_API = {"run_dir", "to_dict", "source"}


def test_every_config_read_names_a_setting():
    """A misspelt key in code fails here, not at run time: every ``config.x`` / ``config.x.y`` the
    package reads is a section, a setting or the Config API."""
    bad = []
    for file in sorted(PACKAGE.rglob("*.py")):
        assert 'config["' not in file.read_text(), file
        for line, key in _config_reads(file):
            head = key.split(".")[0]
            if key in KEYS or key in SECTIONS or head in CONFIG_API:
                continue
            bad.append(f"{file.relative_to(ROOT)}:{line}: config.{key}")
    assert bad == []


def test_config_read_check_catches_a_typo(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f(config):\n    return config.selct.margin, config.select.margn\n")
    reads = [k for _, k in _config_reads(planted)]
    assert "selct.margin" in reads and "select.margn" in reads
    assert not any(k in KEYS or k in SECTIONS for k in ("selct.margin", "select.margn"))


# ---------------------------------------------------------------- documented settings

PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))
SETTING_FILES = [p for p in PIPELINES if p.name != "triage.example.yaml"]


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted in SECTIONS:
            out += _leaves(value, dotted + ".")
        else:
            out.append((dotted, value))
    return out


@pytest.mark.parametrize("path", SETTING_FILES, ids=lambda p: p.name)
def test_pipeline_files_hold_schema_keys_with_valid_values(path):
    config = resolve(path)
    for key, _ in _leaves(yaml.safe_load(path.read_text())):
        assert key in KEYS or key.startswith("attribution.params"), f"{path.name}: {key}"
    assert config.source == str(path)


@pytest.mark.parametrize("path", SETTING_FILES, ids=lambda p: p.name)
def test_choices_named_in_comments_are_the_schema_choices(path):
    """A comment listing a key's choices (``preprocess: none  # none | unit | ...``) lists them all, no more."""
    section = None
    for line in path.read_text().splitlines():
        top = re.match(r"^(\w+):", line)
        if top:
            section = top.group(1)
        match = re.match(r"^\s+(\w+):[^#]*#\s*(.*)$", line)
        if not match or section is None:
            continue
        key, comment = f"{section}.{match.group(1)}", match.group(2)
        named = re.findall(r"(\w+)(?::[^|]*)?(?=\s*\||\s*$)", comment) if "|" in comment else []
        check = KEYS[key].check if key in KEYS else None
        if named and check is not None and check.describe().startswith("one of "):
            choices = check.describe()[len("one of "):].split(", ")
            assert sorted(named) == sorted(choices), f"{path.name}: {key}: comment says {named}, schema {choices}"


def test_demo_pipeline_spells_out_the_defaults():
    """pipelines/demo.yaml says it spells the defaults out: every value it sets equals the default."""
    path = ROOT / "pipelines" / "demo.yaml"
    assert "defaults spelled out" in path.read_text()
    flat = dict(_leaves(defaults()))
    differ = [key for key, value in _leaves(yaml.safe_load(path.read_text()))
              if not KEYS[key].path and key != "run_id" and value != flat[key]]
    assert differ == []


def test_every_setting_has_a_comment_and_a_valid_default():
    for key, setting in KEYS.items():
        assert setting.doc.strip(), key
        assert setting.check(setting.default), f"{key}: default {setting.default!r} fails its own check"


# ---------------------------------------------------------------- findings are records

def test_findings_are_frozen_records():
    from audit.findings import Cue, Finding, Verification

    f = Finding(id="F-1", true_label="a", predicted_label="b", members=("x",), rows=(0,), cue=Cue(0.5, 0.5, 0.3, "centre"))
    for name, value in (("score", 1.0), ("status", "persisting"), ("trust", None)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(f, name, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.cue.x = 0.1
    with pytest.raises(TypeError):
        f.members[0] = "y"                      # tuples, not lists
    v = Verification(True, members_tested=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.verified = False


# ---------------------------------------------------------------- docstrings

def _name(node) -> str:
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _documented(doc: str) -> set[str]:
    """Names a docstring documents: entries of its Parameters / Attributes sections and ``name`` mentions."""
    names = set(re.findall(r"``\**([A-Za-z_]\w*)", doc))
    lines = doc.splitlines()
    listing = False
    for line, below in zip(lines, lines[1:] + [""]):
        if re.fullmatch(r"\s*-{3,}\s*", below):
            listing = line.strip() in ("Parameters", "Attributes", "Other Parameters")
        elif listing and line[:1].strip() and not re.fullmatch(r"-{3,}", line):
            names.update(re.findall(r"\**([A-Za-z_]\w*)", line.split(" : ")[0]))
    return names


def _params(fn, method: bool) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    if method and names and not any(_name(d) == "staticmethod" for d in fn.decorator_list):
        names = names[1:]                                   # self / cls
    return [n for n in names if not n.startswith("_")]


def _fields(cls) -> list[str]:
    """Fields of a dataclass its docstring must name (a schema ``setting`` / ``section`` documents itself)."""
    if not any(_name(d) == "dataclass" for d in cls.decorator_list):
        return []
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and not n.target.id.startswith("_") and _name(n.annotation) != "ClassVar"
            and not (isinstance(n.value, ast.Call) and _name(n.value) in ("setting", "section"))]


def undocumented(files: list[Path]) -> list[str]:
    """Public items of ``files`` without a docstring, or whose docstring leaves a parameter (a dataclass:
    a field) unnamed. Public: not ``_``-prefixed, at module level or a method of a public class; a method
    without a docstring that overrides a documented one of a base class inherits its docstring."""
    trees = {f: ast.parse(f.read_text()) for f in files}
    documented_methods = {node.name: ({m.name for m in node.body if isinstance(m, ast.FunctionDef)
                                       and ast.get_docstring(m)}, [_name(b) for b in node.bases])
                          for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}

    def inherited(bases: list[str], method: str) -> bool:
        seen: set[str] = set()
        while bases:
            base = bases.pop()
            if base in documented_methods and base not in seen:
                seen.add(base)
                docs, more = documented_methods[base]
                if method in docs:
                    return True
                bases += more
        return False

    out = []

    def check(where: str, doc: str | None, names: list[str]) -> None:
        missing = [n for n in names if n not in _documented(doc or "")]
        if not doc or missing:
            out.append(f"{where}: " + ("no docstring" if not doc else ", ".join(missing) + " not documented"))

    for file, tree in trees.items():
        rel = file.relative_to(ROOT) if file.is_relative_to(ROOT) else file
        if not ast.get_docstring(tree):
            out.append(f"{rel}: no module docstring")
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name[0] == "_":
                continue
            if not isinstance(node, ast.ClassDef):
                check(f"{rel}:{node.lineno} {node.name}", ast.get_docstring(node), _params(node, False))
                continue
            init = next((m for m in node.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
            doc = ast.get_docstring(node)
            names = _fields(node) or (_params(init, True) if init else [])
            check(f"{rel}:{node.lineno} {node.name}", doc and doc + "\n" + (init and ast.get_docstring(init) or ""),
                  names)
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name[0] != "_":
                    if ast.get_docstring(m) or not inherited([_name(b) for b in node.bases], m.name):
                        check(f"{rel}:{m.lineno} {node.name}.{m.name}", ast.get_docstring(m), _params(m, True))
    return out


def test_every_public_function_and_class_is_documented():
    """Every public function, method and class of ``audit/`` has a docstring naming each parameter (a
    dataclass: each field), in a numpy-style Parameters / Attributes section or as ``name``."""
    assert undocumented(sorted(PACKAGE.rglob("*.py"))) == []


def test_docstring_check_catches_what_it_should(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('"""Module."""\nfrom dataclasses import dataclass\n\n\n'
                       'def bare(x):\n    pass\n\n\n'
                       'def half(images, targets):\n    """Maps of ``images``."""\n\n\n'
                       'def full(images, targets):\n    """Maps.\n\n    Parameters\n    ----------\n'
                       '    images, targets : np.ndarray\n        float32 [N, H, W, C] and int [N].\n    """\n\n\n'
                       '@dataclass\nclass Record:\n    """A record with ``a``."""\n\n    a: int\n    b: float\n\n'
                       '    def to_json(self):\n        return {}\n\n\n'
                       'class Base:\n    """Base."""\n\n    def run(self, x):\n        """Run on ``x``."""\n\n\n'
                       'class Child(Base):\n    """Child."""\n\n    def run(self, x):\n        return x\n')
    found = [line.split(" ", 1)[1] for line in undocumented([planted])]
    assert found == ["bare: no docstring", "half: targets not documented", "Record: b not documented",
                     "Record.to_json: no docstring"]


EXPLAINERS = sorted(p for p in (PACKAGE / "explainers").glob("*.py") if p.stem not in ("__init__", "base")
                    and not p.stem.startswith("_"))


@pytest.mark.parametrize("path", EXPLAINERS, ids=lambda p: p.stem)
def test_explainer_modules_cite_their_paper_and_formula(path):
    """Each method's module docstring names its paper (a quoted title and a year) and writes the formula
    the code computes out as a literal block (``::``)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert re.search(r'"[^"]{10,}"', doc) and re.search(r"\b(19|20)\d\d\b", doc), path.name
    assert "::" in doc or "formula" in doc.lower(), path.name
