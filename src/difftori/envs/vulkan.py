"""A private software Vulkan driver (Mesa's lavapipe) for SAPIEN / ManiSkill3 rendering without a GPU.

SAPIEN 3 needs Vulkan 1.2+ features that Debian 12's Mesa 22.3 lavapipe lacks ("Failed to find a
supported physical device"); Mesa 25's lavapipe from bookworm-backports works. ``python -m
difftori.envs.vulkan fetch`` (run by ``make maniskill``) downloads its packages with ``apt-get
download`` (private package lists, no root, nothing installed system-wide), extracts them into
:func:`vulkan_dir` and writes an ICD json pointing at the extracted ``libvulkan_lvp.so``. The system
Mesa (MuJoCo's EGL) stays untouched.

:func:`configure` (called by :mod:`difftori.envs.maniskill` before SAPIEN is imported) points the
Vulkan loader at that driver: it sets ``VK_ICD_FILENAMES`` and preloads the private ``libdrm``
(lavapipe 25 needs libdrm >= 2.4.121; setting ``LD_LIBRARY_PATH`` inside a running process does not
change where the dynamic linker looks, a preloaded soname is reused). It does nothing when the user
set ``VK_ICD_FILENAMES`` or ``DIFFTORI_VULKAN=system`` (e.g. on a machine with a GPU driver), or
when the driver has not been fetched.

Location: ``$DIFFTORI_VULKAN_DIR`` if set, else ``<sys.prefix>/vulkan`` (the venv's own folder, so
``make clean`` removes it with the venv).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["vulkan_dir", "icd_file", "configure", "fetch", "PACKAGES", "SOURCE"]

SOURCE = "deb http://deb.debian.org/debian bookworm-backports main"
"""The apt source of the driver (Mesa 25.0.x lavapipe built for Debian 12)."""

PACKAGES = ("mesa-vulkan-drivers", "libdrm2", "libdrm-amdgpu1")
"""Packages extracted into the private folder (the driver and the newer libdrm it links)."""

ICD_NAME = "lvp_icd.private.json"
LIB_SUBDIR = Path("usr/lib/x86_64-linux-gnu")

_configured = False


def vulkan_dir() -> Path:
    """Folder of the private driver: ``$DIFFTORI_VULKAN_DIR`` or ``<sys.prefix>/vulkan``."""
    env = os.environ.get("DIFFTORI_VULKAN_DIR")
    return Path(env) if env else Path(sys.prefix) / "vulkan"


def icd_file(root: Path | None = None) -> Path:
    """The ICD json written by :func:`fetch` (it names the private ``libvulkan_lvp.so`` by absolute path)."""
    return (root or vulkan_dir()) / ICD_NAME


def configure() -> bool:
    """Point Vulkan at the private lavapipe if it is there and the user chose nothing; True if it did.

    Idempotent. Also prepends the driver's folder to ``LD_LIBRARY_PATH`` for child processes.
    """
    global _configured
    if _configured:
        return True
    if os.environ.get("VK_ICD_FILENAMES") or os.environ.get("DIFFTORI_VULKAN", "").lower() == "system":
        return False
    icd = icd_file()
    if not icd.is_file():
        return False
    libdir = vulkan_dir() / LIB_SUBDIR
    for lib in ("libdrm.so.2", "libdrm_amdgpu.so.1"):
        path = libdir / lib
        if path.exists():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    os.environ["VK_ICD_FILENAMES"] = str(icd)
    old = os.environ.get("LD_LIBRARY_PATH", "")
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{old}" if old else str(libdir)
    _configured = True
    return True


def fetch(root: Path | None = None, force: bool = False) -> Path:
    """Download and extract the driver into ``root`` (default :func:`vulkan_dir`); returns the ICD json.

    Uses ``apt-get`` with private source list, package lists and cache (in a temporary folder), so it
    needs network access to deb.debian.org but no root. Skips the work when the ICD json exists
    (``force`` re-fetches).
    """
    root = Path(root or vulkan_dir()).resolve()
    icd = icd_file(root)
    if icd.is_file() and not force:
        return icd
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: the private Vulkan driver is fetched from Debian packages (Debian/Ubuntu only)")
    with tempfile.TemporaryDirectory(prefix="difftori-vulkan-") as tmp:
        t = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial", "debs"):
            (t / sub).mkdir(parents=True)
        (t / "sources.list").write_text(SOURCE + "\n")
        opts = [
            f"-oDir::Etc::SourceList={t / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={t / 'lists'}",
            f"-oDir::Cache={t / 'cache'}",
            "-qq",
        ]
        if os.geteuid() == 0:
            opts.append("-oAPT::Sandbox::User=root")  # _apt could not write into our private folders
        _run(["apt-get", *opts, "update"], t)
        _run(["apt-get", *opts, "download", *PACKAGES], t / "debs")
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        for deb in sorted((t / "debs").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], t)
    lib = root / LIB_SUBDIR / "libvulkan_lvp.so"
    for other in (root / LIB_SUBDIR).glob("libvulkan_*.so"):  # the package's GPU drivers: 54 of its 64 MB
        if other != lib:
            other.unlink()
    if not lib.is_file():
        raise RuntimeError(f"{lib} missing after extracting {', '.join(PACKAGES)}")
    original = json.loads((root / "usr/share/vulkan/icd.d/lvp_icd.json").read_text())
    original["ICD"]["library_path"] = str(lib)
    icd.write_text(json.dumps(original, indent=2) + "\n")
    return icd


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} ... failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    """``python -m difftori.envs.vulkan fetch [--dir D] [--force]`` / ``where``."""
    p = argparse.ArgumentParser(prog="python -m difftori.envs.vulkan", description=__doc__.splitlines()[0])
    p.add_argument("cmd", choices=["fetch", "where"])
    p.add_argument("--dir", type=Path, default=None, help="target folder (default: $DIFFTORI_VULKAN_DIR or <venv>/vulkan)")
    p.add_argument("--force", action="store_true", help="re-fetch even if the driver is there")
    args = p.parse_args(argv)
    if args.cmd == "where":
        print(icd_file(args.dir))
        return 0
    try:
        print(f"software Vulkan (lavapipe): {fetch(args.dir, force=args.force)}")
    except RuntimeError as exc:
        print(f"difftori: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
