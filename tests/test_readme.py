"""The README's door works as written: every Python block and every `usf-fast` command line of it
runs, in the README's order, in one fresh folder (a block whose first line is `# not run: …` says
why it cannot run here; `make` lines are the set-up these tests already run under)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def readme_snippets(text: str) -> list[tuple[str, str]]:
    """('python', code) for each ```python block and ('cli', line) for each `usf-fast …` line of a
    ```bash/```sh/```console block, in order; `# not run` blocks left out."""
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if lang == "python":
            if not body.lstrip().startswith("# not run"):
                out.append(("python", body))
        elif lang in ("bash", "sh", "console", "shell"):
            for line in body.splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("usf-fast "):
                    out.append(("cli", line.split(" #")[0].strip()))
    return out


SNIPPETS = readme_snippets(open(os.path.join(ROOT, "README.md")).read())


def test_the_readme_has_python_and_cli_snippets():
    kinds = {k for k, _ in SNIPPETS}
    assert kinds == {"python", "cli"}


def test_the_extraction_finds_blocks_and_command_lines_and_skips_marked_ones():
    text = ("```python\nx = 1\n```\n```python\n# not run: needs weights\nboom\n```\n"
            "```bash\nmake test\nusf-fast show a.json  # comment\n```\n")
    assert readme_snippets(text) == [("python", "x = 1\n"), ("cli", "usf-fast show a.json")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("k", range(len(SNIPPETS)), ids=[f"{k}-{kind}" for k, (kind, _) in enumerate(SNIPPETS)])
def test_readme_snippet_runs_as_written(k, workdir):
    kind, code = SNIPPETS[k]
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), MPLBACKEND="Agg")
    if kind == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-c", code]
    r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"README {kind} snippet failed (rc {r.returncode}):\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
