"""The layout holds: the core is Spark-free (evaluation, fine-tuning and a GPU box use it
without PySpark), and one module talks to Delta."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import lookalike
import lookalike.core
import lookalike.model

# The model's lifecycle runs on the core alone: every module of lookalike.model, and the CLI
# that declares their commands.
MODEL_TOOLS = [
    f"lookalike.model.{m.name}" for m in pkgutil.iter_modules(lookalike.model.__path__)
] + ["lookalike.cli"]
LIB = Path(lookalike.__file__).resolve().parent


def test_importing_every_core_module_loads_no_pyspark():
    """Every module of lookalike.core, and the model tools, imported in a fresh interpreter,
    leave pyspark (and py4j, its bridge to the JVM) out of sys.modules."""
    core = [f"lookalike.core.{m.name}" for m in pkgutil.iter_modules(lookalike.core.__path__)]
    assert {"lookalike.core.images", "lookalike.core.embedding", "lookalike.core.ann"} <= set(core)
    assert {"lookalike.model.evaluate", "lookalike.model.finetune"} <= set(MODEL_TOOLS)
    modules = core + MODEL_TOOLS
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('pyspark', 'py4j')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_one_module_talks_to_delta():
    """Delta reads, writes and commits go through lookalike.tables: no other module of the
    library imports deltalake (a second way in would bypass its staging and checks)."""
    importing = sorted(
        str(path.relative_to(LIB))
        for path in LIB.rglob("*.py")
        if re.search(r"^\s*(import deltalake|from deltalake)", path.read_text(), re.M)
    )
    assert importing == ["tables.py"]
