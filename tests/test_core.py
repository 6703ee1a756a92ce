"""The core is Spark-free: evaluation, fine-tuning and a GPU box can use it without PySpark."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import lookalike.core

# The model tools that run on the core alone: evaluation, labelled sets, fine-tuning.
MODEL_TOOLS = ["lookalike.evaluate", "lookalike.labelled", "lookalike.finetune"]


def test_importing_every_core_module_loads_no_pyspark():
    """Every module of lookalike.core, and the model tools, imported in a fresh interpreter,
    leave pyspark (and py4j, its bridge to the JVM) out of sys.modules."""
    core = [f"lookalike.core.{m.name}" for m in pkgutil.iter_modules(lookalike.core.__path__)]
    assert {"lookalike.core.images", "lookalike.core.embedding"} <= set(core)
    modules = core + MODEL_TOOLS
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('pyspark', 'py4j')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
