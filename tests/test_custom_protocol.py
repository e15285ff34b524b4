"""The example third-party plugin (examples/custom_protocol) installs with pip, registers through
the entry point, and passes the conformance kit in its own tests.

It is installed with ``pip install --target`` into a temporary folder put on PYTHONPATH, not into
the project's virtualenv: entry points are found on sys.path either way, and other tests running
at the same time keep seeing exactly the built-in protocols.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_protocol"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("ldjson-site")
    build = tmp_path_factory.mktemp("ldjson-build")
    # setuptools builds in the source tree (build/, *.egg-info): build from a copy.
    source = build / "src"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "TMPDIR": str(build)},
    )  # fmt: skip
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return target


def env_with(path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path),
            os.environ.get("PYTHONPATH")]))}  # fmt: skip


def test_gateway_plugins_lists_the_example(plugin_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "plugins"],
        capture_output=True, text=True, timeout=60, check=True, env=env_with(plugin_path),
    )  # fmt: skip
    line = next(line for line in done.stdout.splitlines() if line.startswith("ldjson"))
    assert "client" in line and line.rstrip().endswith("ok"), line


def test_the_example_passes_the_conformance_kit(plugin_path: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
         str(tmp_path / "t"), "-W", "ignore::DeprecationWarning"],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=300, check=False,
        env=env_with(plugin_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_validate_checks_the_installed_plugins_adapter(plugin_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(
        "devices:\n"
        "  scale: {protocol: ldjson, host: 127.0.0.1, port: 7000, points: [{name: w}]}\n"
        "  spare: {protocol: ldjson, enabled: false, host: 127.0.0.1, port: 7001,"
        " points: [{name: w}]}\n"
    )

    def validate(site: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "validate", str(config)],
            capture_output=True, text=True, timeout=60, check=False, env=env_with(site),
        )  # fmt: skip

    done = validate(plugin_path)
    assert (done.returncode, done.stderr) == (0, "")  # its adapter was imported and is one
    assert done.stdout.strip() == (
        f"{config}: ok (1 device or endpoint, 1 point, 0 bridges; disabled: 1 device or endpoint)"
    )
    # The same plugin with its adapter class renamed: validate says what run would.
    broken = tmp_path / "site"
    shutil.copytree(plugin_path, broken)
    adapter = broken / "ldjson_protocol" / "adapter.py"
    adapter.write_text(adapter.read_text().replace("class LdjsonAdapter(", "class Renamed("))
    done = validate(broken)
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        f"{config}:2:21: devices.scale.protocol: found protocol 'ldjson' (from ldjson-protocol): "
        "adapter 'ldjson_protocol.adapter:LdjsonAdapter' for role 'client': "
        "ldjson_protocol.adapter has no 'LdjsonAdapter'; expected a plugin whose adapter can be "
        "imported (fix or reinstall ldjson-protocol, or set enabled: false on this entry)"
    )
