"""Documents rendered from the config schema stay in step with it (scripts/gendocs.py)."""

from __future__ import annotations

import importlib.util
import os
import re
from types import ModuleType

from wgagent import config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gendocs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gendocs", os.path.join(ROOT, "scripts", "gendocs.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_and_example_config_are_generated_from_the_schema() -> None:
    for path, text in gendocs().wanted().items():
        with open(path, encoding="utf-8") as f:
            assert f.read() == text, f"{path} is out of date: run python3 scripts/gendocs.py"


def test_readme_lists_every_key() -> None:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for name, _, _ in config.reference():
        assert re.search(rf"^\| `{re.escape(name)}` \|", readme, re.M), name


def test_readme_names_the_default_health_port() -> None:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert f"curl -s localhost:{config.DEFAULT_HEALTH_PORT}/healthz" in readme
