"""The repository root shadows no installed package, and `usf_fast.kernels` imports however usf_fast
is installed (kernels/README.md: the top-level kernels/ folder is not a package)."""
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(code: str, cwd, extra_path=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_only_package_in_the_repository_root_is_usf_fast():
    """Python started in the checkout puts the root first on sys.path: any other regular package
    there (a folder with __init__.py, a module) shadows the installed distribution of that name."""
    shadowing = [p.name for p in ROOT.iterdir() if (p.is_dir() and (p / "__init__.py").exists())
                 or (p.suffix == ".py" and p.name != "setup.py")]
    assert shadowing == ["usf_fast"]


def test_an_installed_kernels_distribution_wins_over_the_kernels_folder(tmp_path):
    """A fake `kernels` distribution on the path stands for PyPI's (which transformers needs)."""
    fake = tmp_path / "site"
    (fake / "kernels").mkdir(parents=True)
    (fake / "kernels" / "__init__.py").write_text("MARK = 'the installed kernels'\n")
    (fake / "kernels-9.9.dist-info").mkdir()
    (fake / "kernels-9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 9.9\n")
    r = _python("import kernels; print(kernels.MARK)", cwd=ROOT, extra_path=fake)
    assert r.returncode == 0 and r.stdout.strip() == "the installed kernels", r.stderr


@pytest.mark.skipif(not any(d.metadata["Name"] == "kernels" for d in importlib.metadata.distributions()),
                    reason="PyPI's kernels is not installed here")
def test_transformers_and_diffusers_import_from_the_repository_root():
    r = _python("import kernels, transformers, diffusers; from transformers.integrations import hub_kernels; "
                "print(kernels.__file__)", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert not r.stdout.strip().startswith(str(ROOT / "kernels")), r.stdout


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_usf_fast_kernels_imports_from_the_checkout_and_from_elsewhere(where, tmp_path):
    r = _python("import usf_fast.kernels.combine as c; print(c.combine_triton.__name__)",
                cwd=ROOT if where == "root" else tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "combine_triton", r.stderr


def test_a_built_wheel_carries_the_kernels_as_usf_fast_kernels(tmp_path):
    env = dict(os.environ, USF_FAST_NO_EXT="1", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path), str(ROOT)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("usf_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "usf_fast/kernels/combine.py" in names
    assert not any(n.startswith("kernels/") for n in names)
