"""The documentation stays true: every shell example of the README and of
docs/ runs, in the order a reader meets them, in one shell, against the
server that the README's first command starts.

How the examples are run, as a reader would:
- in a fresh directory holding the project's files, with its `.venv`;
- the README's first command (install and start) runs in the background,
  as in a first terminal; the second (install and run the tests) is what
  CI runs, so it is not run again from inside the tests;
- the service listens on a free port rather than 8080 (every `8080` of the
  examples is that port);
- `curl` fails on an HTTP error answer (`--fail-with-body`), so an example
  that no longer works fails here;
- a command marked `# until Ctrl-C` (a live tail, a server) runs for a few
  seconds and must not fail before it is stopped.
"""
import os
import re
import shutil
import subprocess
import time

import pytest
import requests

from logsvc.testing import ROOT, free_port

pytestmark = [pytest.mark.server,
              pytest.mark.sqlite_only("the examples use the default store")]

PAGES = ["README.md", "docs/api.md", "docs/live-tail.md", "docs/capture.md", "docs/client.md",
         "docs/access.md", "docs/alerts.md", "docs/grafana.md", "docs/operations.md",
         "docs/deploy.md",
         "docs/benchmarks.md"]
PROJECT_FILES = [".venv", "app.py", "wsgi.py", "gunicorn.conf.py", "requirements.txt",
                 "requirements-dev.txt", "requirements-bench.txt", "pyproject.toml", "logsvc",
                 "schemas", "bench"]
UNTIL_STOPPED = "# until Ctrl-C"


def shell_examples(page):
    """(line number, text) of each ```sh block of a page."""
    text = (ROOT / page).read_text()
    for found in re.finditer(r"^```sh\n(.*?)^```", text, re.S | re.M):
        yield text.count("\n", 0, found.start()) + 1, found.group(1)


def runnable(block):
    """The block as the test runs it: long-running commands bounded."""
    lines = []
    for line in block.splitlines():
        if line.rstrip().endswith(UNTIL_STOPPED):
            command = line.rsplit(UNTIL_STOPPED, 1)[0].rstrip()
            line = f"{{ timeout 3 env {command} || [ $? -eq 124 ]; }}"
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture
def reader_dir(tmp_path):
    """A directory like a fresh checkout with the project's venv in it (a
    copy: the README's `python3 -m venv .venv` then finds and keeps it)."""
    for name in PROJECT_FILES:
        if name == ".venv":
            shutil.copytree(ROOT / name, tmp_path / name, symlinks=True)
        else:
            (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_every_shell_example_runs_in_order(reader_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGSVC_")}
    env.update(LOGSVC_PORT=str(port), PYTHONPATH=str(ROOT), HOME=str(reader_dir))
    examples = [(page, line, block.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
                for page in PAGES for line, block in shell_examples(page)]
    start, tests = examples[0][2], examples[1][2]
    assert start.strip().endswith(".venv/bin/python app.py") and "-m pytest" in tests
    with open(reader_dir / "server.log", "wb") as log:  # the child keeps its own copy
        server = subprocess.Popen(["bash", "-c", start], cwd=reader_dir, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((reader_dir / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        script = ["set -euo pipefail", 'curl() { command curl --fail-with-body "$@"; }']
        for page, line, block in examples[2:]:
            script.append(f"echo '@@ {page}:{line}' >&2")
            script.append(runnable(block))
        # Standard input stays open, as a terminal's would (wsdump reads it).
        with open(reader_dir / "out.log", "w+") as out, open(reader_dir / "err.log", "w+") as err:
            done = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=reader_dir, env=env,
                                    stdin=subprocess.PIPE, stdout=out, stderr=err)
            returncode = done.wait(timeout=600)
            done.stdin.close()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        where = re.findall(r"^@@ (.*)$", stderr, re.M)
        assert returncode == 0, (
            f"the example at {where[-1] if where else '?'} failed ({returncode}):\n"
            f"{stderr[-3000:]}\n{stdout[-2000:]}")
        assert len(where) == len(examples) - 2
    finally:
        try:
            os.killpg(server.pid, 15)
        except ProcessLookupError:
            pass  # it ended by itself (the assertion above says why)
        server.wait(timeout=20)
        shutil.rmtree(reader_dir / "data", ignore_errors=True)


@pytest.mark.parametrize("page", PAGES + ["docs/ui.md"])
def test_every_relative_link_of_the_docs_leads_somewhere(page):
    text = (ROOT / page).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://")):
            continue
        assert ((ROOT / page).parent / target).exists(), f"{page}: {target}"
