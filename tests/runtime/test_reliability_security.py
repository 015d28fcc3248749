"""Security: nothing derived from inputs is unpickled, evaluated or run through a shell; models load only from
the bundled location or a path the user gives; the cached detector is verified before use.

Downloads being verified by sha256 and written atomically is tested in test_fetch.py.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import emotion_batch
from emotion_batch.digest import sha256_file
from emotion_batch.vision.classification import bundled_model_path
from emotion_batch.vision.fetch import YUNET_FILENAME

from .cli_runs import run, summary_of

PACKAGE = Path(emotion_batch.__file__).parent
#: Modules allowed to use pickle, and why: isolated workers exchange the parent's own task and result objects
#: over a private pipe (as ProcessPoolExecutor does); no bytes from input files or disk are ever unpickled.
PICKLE_ALLOWED = {"isolation.py"}
FORBIDDEN_MODULES = {"pickle", "marshal", "shelve", "dill", "cloudpickle", "subprocess"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_ATTRIBUTES = {
    ("os", "system"),
    ("os", "popen"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("yaml", "load"),
}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                if root in FORBIDDEN_MODULES and not (root == "pickle" and path.name in PICKLE_ALLOWED):
                    found.append(f"{path.name}:{node.lineno} imports {name}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno} calls {func.id}()")
            named = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            if named and (func.value.id, func.attr) in FORBIDDEN_ATTRIBUTES:
                found.append(f"{path.name}:{node.lineno} calls {func.value.id}.{func.attr}()")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and not keyword.value.value
                ):
                    found.append(f"{path.name}:{node.lineno} passes shell=...")
                if keyword.arg == "allow_pickle" and not (
                    isinstance(keyword.value, ast.Constant) and not keyword.value.value
                ):
                    found.append(f"{path.name}:{node.lineno} passes allow_pickle=...")
        elif isinstance(node, ast.JoinedStr | ast.BinOp) and _looks_like_sql(node):
            found.append(f"{path.name}:{node.lineno} builds SQL by string formatting")
    return found


def _looks_like_sql(node: ast.AST) -> bool:
    """An f-string or concatenation that starts like an SQL statement and splices values into it."""
    texts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    starts_like_sql = bool(texts) and texts[0].lstrip().upper().startswith(
        ("SELECT ", "INSERT ", "DELETE ", "UPDATE ", "CREATE ", "DROP ", "PRAGMA ")
    )
    spliced = isinstance(node, ast.BinOp) or any(isinstance(c, ast.FormattedValue) for c in ast.walk(node))
    return starts_like_sql and spliced


def test_no_pickle_eval_shell_or_formatted_sql_in_the_package() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 15
    problems = [v for path in sources for v in _violations(path)]
    assert problems == []


def test_pickle_in_isolation_only_reads_what_the_parent_made() -> None:
    """The one allowed module unpickles its own initializer blob and round-trips exceptions; nothing else."""
    tree = ast.parse((PACKAGE / "batch" / "isolation.py").read_text(encoding="utf-8"))
    loads = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("load", "loads")
    ]
    assert loads == ["pickle.loads(pickle.dumps(exc))", "pickle.loads(init_blob)"] or sorted(loads) == sorted(
        ["pickle.loads(pickle.dumps(exc))", "pickle.loads(init_blob)"]
    )


@pytest.mark.slow
def test_models_lying_around_are_never_loaded(
    tmp_path: Path, astronaut_jpg: Path, cli_env, tiny_model: Path
) -> None:
    """A model.onnx in the working directory or among the inputs is ignored: bundled, or what the user names."""
    bundled = bundled_model_path()
    if not bundled.is_file():
        pytest.skip("the bundled model is not built")
    planted = tmp_path / "cwd"
    inputs = tmp_path / "inputs"
    for folder in (planted, inputs):
        folder.mkdir()
        shutil.copy(tiny_model, folder / "model.onnx")
        shutil.copy(tiny_model.with_suffix(".json"), folder / "model.json")
    shutil.copy(astronaut_jpg, inputs / "astronaut.jpg")
    out = tmp_path / "r.csv"
    import subprocess

    from .cli_runs import command

    result = subprocess.run(
        [*command(), str(inputs), "--out", str(out), "--no-charts"],
        cwd=planted, capture_output=True, text=True, env={**__import__("os").environ, **cli_env}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = summary_of(out)
    assert set(summary["model_sha256"].dropna()) == {sha256_file(bundled)}
    assert summary.loc["model.onnx", "status"] == "skipped"  # an input like any other file, never a model

    given = run(inputs, "--out", tmp_path / "given.csv", "--no-charts", "--model", tiny_model, env=cli_env)
    assert given.returncode == 0, given.stderr
    assert set(summary_of(tmp_path / "given.csv")["model_sha256"].dropna()) == {sha256_file(tiny_model)}


@pytest.mark.slow
def test_a_tampered_cached_detector_is_refused(
    tmp_path: Path, astronaut_jpg: Path, yunet_path: Path, model_args
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    tampered = cache / YUNET_FILENAME
    tampered.write_bytes(yunet_path.read_bytes() + b"\0")
    env = {"EMOTION_BATCH_CACHE_DIR": str(cache), "EMOTION_BATCH_DETECTOR_MODEL": ""}
    result = run(astronaut_jpg, "--out", tmp_path / "r.csv", "--detector", "yunet", *model_args, env=env)
    assert result.returncode == 2
    assert "does not match its pinned sha256" in result.stderr and "models fetch --force" in result.stderr
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.csv.state").exists()


@pytest.mark.slow
def test_hostile_file_names_are_just_names(tmp_path: Path, astronaut_jpg: Path, cli_env, model_args) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    names = ["a'); DROP TABLE files;--.jpg", "$(touch PWNED).jpg", "`touch PWNED`.jpg", 'quote",comma.jpg']
    for name in names:
        shutil.copy(astronaut_jpg, inputs / name)
    out = tmp_path / "r.csv"
    for _ in range(2):
        result = run(inputs, "--out", out, "--no-charts", *model_args, env=cli_env)
        assert result.returncode == 0, result.stderr
    assert "analysing 0 file(s); 4 unchanged file(s) kept" in result.stderr
    assert sorted(summary_of(out).index) == sorted(names)
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()


def test_the_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle, subprocess\nimport os\n"
        "eval(x)\nos.system(x)\nsubprocess.run(x, shell=True)\nnp.load(f, allow_pickle=True)\n"
        "db.execute(f'SELECT * FROM files WHERE source = {name}')\n"
        "db.execute('DELETE FROM files WHERE source = ' + name)\n"
    )
    found = _violations(bad)
    assert len(found) == 8, found
