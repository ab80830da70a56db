"""`make install` into a staging directory: the tree, the modes, a working command.

The Python package is built and installed by pip for real (this needs the
build backend from PyPI or pip's cache). The test also checks that installing
elsewhere left the running environment's own kleened (the developer's
editable install) alone.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kleened.config import KNOWN_KEYS

TOP = Path(__file__).resolve().parents[2]
PREFIX = "/usr/local"
TEMPLATE = TOP / "etc" / "pf.conf.kleene"

pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="needs make")


def _installed_kleened() -> str | None:
    try:
        return importlib.metadata.version("kleened")
    except importlib.metadata.PackageNotFoundError:
        return None


def make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=TOP,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    destdir = tmp_path_factory.mktemp("destdir")
    args = ["-f", "mk/install.mk", "install", f"DESTDIR={destdir}", f"PREFIX={PREFIX}"]
    args.append(f"PYTHON={sys.executable}")
    if not TEMPLATE.exists():
        # etc/pf.conf.kleene comes with the networking work; until then a
        # stand-in shows that the template is installed where init looks.
        stand_in = tmp_path_factory.mktemp("pf") / "pf.conf.kleene"
        stand_in.write_text("### KLEENED MACROS START ###\n<%= kleene_macros %>\n")
        args.append(f"PF_TEMPLATE={stand_in}")
    before = _installed_kleened()
    done = make(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    # pip must not have uninstalled the kleened this interpreter runs
    assert _installed_kleened() == before
    return destdir


def test_tree(staged: Path):
    root = staged / PREFIX.lstrip("/")
    modes = {
        "bin/kleened": 0o755,
        "etc/rc.d/kleened": 0o555,
        "etc/kleened/kleened.yaml.sample": 0o644,
        "etc/kleened/pf.conf.kleene.sample": 0o644,
        "etc/newsyslog.conf.d/kleened.conf": 0o644,
        "lib/systemd/system/kleened.service": 0o644,
    }
    for relative, mode in modes.items():
        path = root / relative
        assert path.is_file(), relative
        assert path.stat().st_mode & 0o777 == mode, relative
    # no configuration file of its own in a staged install (a package's @sample does that)
    assert not (root / "etc/kleened/kleened.yaml").exists()
    if TEMPLATE.exists():
        assert (root / "etc/kleened/pf.conf.kleene.sample").read_bytes() == TEMPLATE.read_bytes()
    # the rc.d script and the service file as in the source tree (PREFIX is /usr/local)
    assert (root / "etc/rc.d/kleened").read_text() == (TOP / "rc.d/kleened").read_text()
    assert (
        "ExecStart=/usr/local/bin/kleened serve"
        in (root / "lib/systemd/system/kleened.service").read_text()
    )


def site_packages(staged: Path) -> Path:
    (found,) = [
        p.parent.parent for p in staged.rglob("kleened/__init__.py") if "-packages" in str(p)
    ]
    return found


def test_package_contents(staged: Path):
    package = site_packages(staged) / "kleened"
    for relative in ("cli.py", "hostinit.py", "hostinit_freebsd.py", "hostinit_linux.py"):
        assert (package / relative).is_file(), relative
    assert (package / "migrations" / "env.py").is_file()  # shipped as kleened.migrations
    assert (package / "host" / "linux" / "reaper.c").is_file()  # package data


def test_installed_command_runs(staged: Path):
    command = staged / PREFIX.lstrip("/") / "bin" / "kleened"
    env = {**os.environ, "PYTHONPATH": str(site_packages(staged))}
    done = subprocess.run(
        [str(command), "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for subcommand in ("serve", "migrate", "ping", "openapi", "init"):
        assert subcommand in done.stdout
    # and it is the installed copy that ran, not the source tree
    where = subprocess.run(
        [sys.executable, "-c", "import kleened; print(kleened.__file__)"],
        capture_output=True, text=True, env=env, timeout=60, cwd=staged,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(staged))


def test_installed_rc_script_parses(staged: Path):
    script = staged / PREFIX.lstrip("/") / "etc/rc.d/kleened"
    for shell in ("sh", "bash"):
        if shutil.which(shell):
            done = subprocess.run([shell, "-n", str(script)], capture_output=True, timeout=30)
            assert done.returncode == 0, (shell, done.stderr)


def test_sample_config_documents_every_key(staged: Path):
    sample = staged / PREFIX.lstrip("/") / "etc/kleened/kleened.yaml.sample"
    raw = yaml.safe_load(sample.read_text())
    assert set(raw) == KNOWN_KEYS
    assert (raw["storage"], raw["kleene_root"]) == ("zfs", "zroot/kleene")
    # each key comes with a comment block that gives its default
    blocks = sample.read_text().split("\n\n")
    for key in KNOWN_KEYS:
        (block,) = [b for b in blocks if re.search(rf"^{key}:", b, re.M)]
        assert "\n# Default: " in block, key


def test_other_prefix_is_written_into_the_files(tmp_path: Path):
    """Only the file part (no pip): the paths inside follow PREFIX."""
    template = TEMPLATE if TEMPLATE.exists() else tmp_path / "pf.conf.kleene"
    if not TEMPLATE.exists():
        template.write_text("stand-in\n")
    done = make(
        "-f", "mk/install.mk", "install-files", f"DESTDIR={tmp_path}/d", "PREFIX=/opt/kleene",
        f"PF_TEMPLATE={template}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    root = tmp_path / "d/opt/kleene"
    rc_script = (root / "etc/rc.d/kleened").read_text()
    assert ': "${kleened_command:=/opt/kleene/bin/kleened}"' in rc_script
    assert ': "${kleened_config:=/opt/kleene/etc/kleened/kleened.yaml}"' in rc_script
    assert "/usr/local" not in rc_script
    sample = yaml.safe_load((root / "etc/kleened/kleened.yaml.sample").read_text())
    assert sample["pf_config_template_path"] == "/opt/kleene/etc/kleened/pf.conf.kleene"
    assert (
        "ExecStart=/opt/kleene/bin/kleened serve"
        in (root / "lib/systemd/system/kleened.service").read_text()
    )
    # installing again over the read-only rc.d script works
    assert make(
        "-f", "mk/install.mk", "install-files", f"DESTDIR={tmp_path}/d", "PREFIX=/opt/kleene",
        f"PF_TEMPLATE={template}",
    ).returncode == 0  # fmt: skip


def test_top_makefile_includes_the_install_target(tmp_path: Path):
    done = make("-n", "install", f"DESTDIR={tmp_path}", f"PREFIX={PREFIX}", "PF_TEMPLATE=/dev/null")
    assert done.returncode == 0, done.stderr
    assert "pip install" in done.stdout
    assert f"{tmp_path}/usr/local/etc/rc.d/kleened" in done.stdout
