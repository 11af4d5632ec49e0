"""The package installs: outside the checkout, `import logsvc.client` works
and the `logsvc` command runs."""
import os
import shutil
import subprocess
import sys

from logsvc.testing import ROOT


def test_pip_install_gives_the_client_and_the_command_outside_the_checkout(tmp_path):
    # A copy of what a clone holds, so that the build leaves the checkout alone.
    source = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        source.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in ("logsvc", "schemas"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    found = subprocess.run(
        [sys.executable, "-c", "import logsvc.client, schemas; print(logsvc.client.__file__)"],
        capture_output=True, text=True, cwd=outside, env=env, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().startswith(str(target))
    assert (target / "logsvc" / "api" / "static" / "index.html").exists()
    command = subprocess.run([str(target / "bin" / "logsvc"), "--help"], capture_output=True,
                             text=True, cwd=outside, env=env, timeout=60)
    assert command.returncode == 0, command.stderr
    assert "tail" in command.stdout and "query" in command.stdout
