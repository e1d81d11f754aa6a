"""runtime/ must import without torch: edge devices have none."""
import subprocess
import sys

from conftest import ROOT

PROBE = r"""
import importlib, importlib.abc, pkgutil, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name in ("torchvision", "timm"):
            raise ImportError(f"torch is not allowed in runtime/ (tried to import {name})")
        return None

sys.meta_path.insert(0, NoTorch())
import runtime
mods = ["runtime"]
for m in pkgutil.walk_packages(runtime.__path__, "runtime."):
    importlib.import_module(m.name)
    mods.append(m.name)
assert "torch" not in sys.modules
print(len(mods), "modules:", " ".join(sorted(mods)))
"""


def test_runtime_imports_without_torch():
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "runtime.charset" in r.stdout and "runtime.datasets" in r.stdout


def test_probe_really_blocks_torch():
    # The guard itself must bite, or the test above proves nothing.
    probe = PROBE.replace("import runtime\n", "import runtime\nimport torch\n", 1)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "torch is not allowed" in r.stderr
