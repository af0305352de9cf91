"""The installed package carries the built-in meshes and models and finds them from any directory."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_meshes_and_models(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("rainier_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("meshes", "models"):
        for f in (ROOT / kind).glob("*.toml"):
            assert f"rainier_jax/{kind}/{f.name}" in names
    assert not any(n.startswith("shared/") or "../" in n for n in names)
    # Every module of every subpackage ships (pyproject.toml lists the packages by hand).
    package = ROOT / "rainier_jax"
    for module in package.rglob("*.py"):
        assert f"rainier_jax/{module.relative_to(package).as_posix()}" in names

    # Installed elsewhere and run from an unrelated directory, the names resolve.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("from rainier_jax.config.typed import builtin_names; from rainier_jax.hardware.topology import load_topology;"
            "print(builtin_names('meshes'), builtin_names('models'), load_topology('trn2-ultraserver').num_ranks)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "trn2-mini-8" in out and "tiny" in out and out.strip().endswith("256")
    assert str(site) in subprocess.run([sys.executable, "-c", "import rainier_jax; print(rainier_jax.__file__)"],
                                       cwd=tmp_path, env=env, capture_output=True, text=True).stdout
