"""Install a pinned npm package set into the git-ignored ``.cache/`` once.

``tests/e2e/<name>/package.json`` (and its ``package-lock.json`` when there is one) is
copied to ``.cache/<cache>/`` and installed with ``npm ci`` (``npm install`` with no
lock: ``opencode-ai`` has none, since npm writes only this platform's optional
binaries into a lock and then refuses it; its exact pin pins its binaries too); a
stamp holding the hash of the files makes later runs skip the install (a changed
pin reinstalls). A file lock keeps
parallel sessions from installing into the same folder at once. Install scripts are
not run by npm (npm 11 only warns about them unless approved); a script the caller
names is run after the install instead (OpenCode's ``postinstall.mjs``, which only
links the platform binary in place of a stub that prints an error).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
PACKAGE_FILES = ("package.json", "package-lock.json")


def node_and_npm() -> tuple[Path, Path]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for this end-to-end test")
    return Path(node), Path(npm)


def ensure_installed(
    source: Path, cache: str, *, postinstall: Sequence[str] = ()
) -> Path:
    """Install ``source``'s package files into ``.cache/<cache>`` unless done.

    ``postinstall``: scripts (paths inside the install folder) run with ``node``.
    """
    node, npm = node_and_npm()
    target = CACHE / cache
    target.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    files = [name for name in PACKAGE_FILES if (source / name).is_file()]
    for name in files:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes())
    stamp = target / ".installed"
    with FileLock(str(CACHE / f"{cache}-install.lock")):
        if (
            (target / "node_modules").is_dir()
            and stamp.is_file()
            and stamp.read_text() == digest.hexdigest()
        ):
            return target
        stamp.unlink(missing_ok=True)
        shutil.rmtree(target / "node_modules", ignore_errors=True)
        for name in PACKAGE_FILES:
            (target / name).unlink(missing_ok=True)
            if name in files:
                shutil.copyfile(source / name, target / name)
        install = ["ci"] if "package-lock.json" in files else ["install", "--no-save"]
        done = subprocess.run(
            [str(npm), *install, "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"npm failed in {target}:\n{done.stderr[-4000:]}")
        for script in postinstall:
            subprocess.run(
                [str(node), str(target / script)],
                cwd=(target / script).parent,
                capture_output=True,
                timeout=120,
                check=True,
            )
        stamp.write_text(digest.hexdigest())
    return target
