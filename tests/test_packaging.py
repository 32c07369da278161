"""The conda environments and the pip project must name the same packages (they cannot drift).

environment.yml (a developer's env) holds the base and `test` packages; workflow/envs/reptile-tf.yaml
(the env of every Snakemake rule under `--sdm conda`) holds the runtime `[project] dependencies`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LINUX = {"sys_platform": "linux", "platform_system": "Linux"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ ;\[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_packages(extras: tuple[str, ...] = ("test",)) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    reqs = [Requirement(r) for r in specs]
    # conda users are on Linux here; evaluate the platform markers for it.
    return {r.name.lower(): str(r.specifier) for r in reqs if r.marker is None or r.marker.evaluate(LINUX)}


def environment_packages(path: str = "environment.yml") -> dict[str, str]:
    env = yaml.safe_load((ROOT / path).read_text())
    specs: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            specs.extend(dep.get("pip", []))
        else:
            specs.append(dep)
    out = {}
    for spec in specs:
        name = _name(spec)
        if name not in {"python", "pip"}:
            out[name] = spec[len(name):].strip()
    return out


def test_environment_and_pyproject_name_the_same_packages():
    assert set(environment_packages()) == set(pyproject_packages())


def test_environment_and_pyproject_use_the_same_version_bounds():
    env, py = environment_packages(), pyproject_packages()
    for name in py:
        assert set(env[name].split(",")) == set(py[name].split(",")), name


WORKFLOW_ENV = "workflow/envs/reptile-tf.yaml"


def test_workflow_env_names_the_runtime_dependencies():
    # The rules' conda env: exactly the runtime packages (no test runner), so `--sdm conda` jobs
    # can import everything `reptile-tf` imports.
    env, py = environment_packages(WORKFLOW_ENV), pyproject_packages(extras=())
    assert set(env) == set(py), {"missing": sorted(set(py) - set(env)), "extra": sorted(set(env) - set(py))}


def test_workflow_env_uses_the_runtime_version_bounds():
    env, py = environment_packages(WORKFLOW_ENV), pyproject_packages(extras=())
    for name in py:
        assert set(env.get(name, "").split(",")) == set(py[name].split(",")), name


def test_name_parser_sees_versions_and_extras():
    # The comparison above is only as good as this parser: a guard that it can fail.
    assert _name("tensorflow[and-cuda]>=2.16") == "tensorflow"
    assert _name("tensorflow_datasets>=4.9,<5") == "tensorflow-datasets"
    assert environment_packages() != {}
    assert environment_packages(WORKFLOW_ENV) != {}
