"""`kleened init` on FreeBSD: the original's `initialize_host` (reference §12.4), amended.

Steps, in order, each printed as the original printed it:

1. kernel modules zfs, pf, pflog and if_bridge loaded (`kldstat -m`, else `kldload`);
2. `zfs_load`, `pf_load` in /boot/loader.conf and `zfs_enable`, `pf_enable`,
   `pflog_enable` in /etc/rc.conf set to YES (`sysrc`);
3. the datasets `<root>`, `<root>/image`, `<root>/container`, `<root>/volumes`,
   and a mountpoint on `<root>`;
4. the pf template at `pf_config_template_path`, copied from the installed
   sample if it is missing;
5. a hint when rctl is not enabled in /boot/loader.conf (never changes anything).

Amendments to the original: if_bridge is loaded too (bridge networks need it,
reference network §7), a dry run creates no datasets (§14.7), the mountpoint
check works, and the pf template is installed (the daemon needs it at start).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from kleened.host import cmd
from kleened.hostinit import (
    PF_TEMPLATE_NAME,
    Init,
    InitError,
    ensure_data_root,
    ensure_datasets,
)

KLDSTAT = "/sbin/kldstat"
KLDLOAD = "/sbin/kldload"
SYSRC = "/usr/sbin/sysrc"
ZFS = "/sbin/zfs"
LOADER_CONF = "/boot/loader.conf"
RC_CONF = "/etc/rc.conf"

KERNEL_MODULES = ("zfs", "pf", "pflog", "if_bridge")
RC_SETTINGS = (
    ("zfs_load", LOADER_CONF),
    ("zfs_enable", RC_CONF),
    ("pf_load", LOADER_CONF),
    ("pf_enable", RC_CONF),
    ("pflog_enable", RC_CONF),
)
# The last assignment in loader.conf wins; quotes around the value are optional.
RACCT_LINE = re.compile(r'^\s*kern\.racct\.enable\s*=\s*"?([^"#\s]*)"?\s*(?:#.*)?$')


async def ensure_kernel_module(init: Init, module: str) -> None:
    init.write(f"Verifying kernel module {module} is loaded...")
    if not (await init.run([KLDSTAT, "-m", module])).ok:
        init.write("not loaded, trying to load..")
        if not init.dry_run:
            loaded = await init.run([KLDLOAD, module])
            if not loaded.ok:
                raise InitError(cmd.failure_message(loaded))
    init.line("OK")


async def ensure_rc_setting(init: Init, variable: str, file: str) -> None:
    init.write(f"Verifying if '{variable}' is set to \"YES\" in {file}...")
    current = await init.run([SYSRC, "-n", "-f", file, variable])
    if not current.ok or current.out.strip() != "YES":
        init.write("not enabled, enabling...")
        if not init.dry_run:
            # `var=YES`, not the original's `var="YES"`: no shell strips the
            # quotes from an argument vector, and sysrc would store them.
            enabled = await init.run([SYSRC, "-n", "-f", file, f"{variable}=YES"])
            if not enabled.ok:
                raise InitError(cmd.failure_message(enabled))
    init.line("OK")


def pf_template_sources(init: Init) -> tuple[Path, ...]:
    if init.host.pf_template_sources is not None:
        return init.host.pf_template_sources
    target = Path(init.settings.pf_config_template_path)
    candidates = (
        # `make install` puts the sample next to where the config points
        target.with_name(f"{target.name}.sample"),
        Path(sys.prefix, "etc", "kleened", f"{PF_TEMPLATE_NAME}.sample"),
        # running from a source checkout
        Path(__file__).resolve().parent.parent / "etc" / PF_TEMPLATE_NAME,
    )
    return tuple(dict.fromkeys(candidates))


def _copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Through a temporary file, so an interrupted copy never leaves half a template.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def ensure_pf_template(init: Init) -> None:
    target = Path(init.settings.pf_config_template_path)
    init.write(f"Verifying pf template {target} exists...")
    if target.is_file():
        init.line("OK")
        return
    sources = pf_template_sources(init)
    source = next((path for path in sources if path.is_file()), None)
    if source is None:
        looked = ", ".join(str(path) for path in sources)
        raise InitError(f"no copy of {PF_TEMPLATE_NAME} to install (looked for {looked})")
    init.write(f"does not exist, installing {source}...")
    if not init.dry_run:
        try:
            _copy_file(source, target)
        except OSError as err:
            raise InitError(f"could not install {target}: {err}") from err
    init.line("OK")


def racct_enabled(loader_conf: Path) -> bool:
    try:
        text = loader_conf.read_text(errors="replace")
    except OSError:
        return False
    value = None
    for line in text.splitlines():
        match = RACCT_LINE.match(line)
        if match:
            value = match.group(1)
    return value == "1"


def check_rctl(init: Init) -> None:
    init.write("Verifying rctl is enabled...")
    if racct_enabled(init.host.loader_conf):
        init.line("OK")
        return
    init.line("error!")
    init.line("Rctl does not seem to be enabled, so container resource limiting will not work.")
    init.line("Set kern.racct.enable=1 in /boot/loader.conf and reboot the system to enable rctl.")


async def initialize(init: Init) -> None:
    for module in KERNEL_MODULES:
        await ensure_kernel_module(init, module)
    for variable, file in RC_SETTINGS:
        await ensure_rc_setting(init, variable, file)
    if init.settings.storage == "zfs":
        await ensure_datasets(init, ZFS)
    else:
        ensure_data_root(init)
    ensure_pf_template(init)
    check_rctl(init)
