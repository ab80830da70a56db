"""`kleened init`: exact commands and lines on FreeBSD, real checks on Linux.

FreeBSD's kldstat, kldload, sysrc and zfs do not exist here, so a fake host
answers them as they would (exit codes and messages from their man pages and
sources), and the tests assert the exact argument vectors and printed lines,
for real runs and dry runs. On Linux `run_init` runs for real: a dry run must
leave mounts, interfaces, datasets and files exactly as they were.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kleened import hostinit_freebsd
from kleened.config import settings_from_mapping
from kleened.host.cmd import CommandNotStarted, CommandResult
from kleened.hostinit import HostPaths, Init, run_init

KLDSTAT, KLDLOAD, SYSRC, ZFS = "/sbin/kldstat", "/sbin/kldload", "/usr/sbin/sysrc", "/sbin/zfs"
LOADER, RC = "/boot/loader.conf", "/etc/rc.conf"
MODULES = ("zfs", "pf", "pflog", "if_bridge")
RC_VARS = (
    ("zfs_load", LOADER),
    ("zfs_enable", RC),
    ("pf_load", LOADER),
    ("pf_enable", RC),
    ("pflog_enable", RC),
)
ROOT = "zroot/kleene"
DATASETS = (ROOT, f"{ROOT}/image", f"{ROOT}/container", f"{ROOT}/volumes")
RCTL_HINT = [
    "Verifying rctl is enabled...error!",
    "Rctl does not seem to be enabled, so container resource limiting will not work.",
    "Set kern.racct.enable=1 in /boot/loader.conf and reboot the system to enable rctl.",
]


@dataclass(frozen=True)
class StandInSettings:
    """Only the four attributes run_init may read: anything else is an AttributeError."""

    kleene_root: str
    storage: str
    data_root: Path
    pf_config_template_path: Path


def _result(argv: Sequence[str], code: int, out: str = "", err: str = "") -> CommandResult:
    return CommandResult(tuple(argv), code, out.encode(), err.encode())


@dataclass
class FakeFreeBSD:
    """kldstat/kldload/sysrc/zfs as they answer, over an in-memory host."""

    loaded: set[str] = field(default_factory=set)
    rc: dict[tuple[str, str], str] = field(default_factory=dict)  # (file, var) -> value
    datasets: dict[str, str] = field(default_factory=lambda: {"zroot": "/zroot"})  # -> mountpoint
    unloadable: set[str] = field(default_factory=set)
    readonly_pool: bool = False
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        assert timeout > 0
        argv = list(argv)
        self.calls.append(argv)
        match argv:
            case [cmd, "-m", module] if cmd == KLDSTAT:
                if module in self.loaded:
                    return _result(argv, 0, f"Id Refs Name\n 12    1 {module}\n")
                return _result(
                    argv, 1, err=f"kldstat: can't find module {module}: No such file or directory\n"
                )
            case [cmd, module] if cmd == KLDLOAD:
                if module in self.unloadable:
                    return _result(
                        argv, 1, err=f"kldload: can't load {module}: No such file or directory\n"
                    )
                self.loaded.add(module)
                return _result(argv, 0)
            case [cmd, "-n", "-f", file, assignment] if cmd == SYSRC and "=" in assignment:
                variable, value = assignment.split("=", 1)
                self.rc[(file, variable)] = value
                return _result(argv, 0, f"{value}\n")
            case [cmd, "-n", "-f", file, variable] if cmd == SYSRC:
                if (file, variable) in self.rc:
                    return _result(argv, 0, f"{self.rc[(file, variable)]}\n")
                return _result(argv, 1, err=f"sysrc: unknown variable '{variable}'\n")
            case [cmd, "list", "-H", "-o", "name", dataset] if cmd == ZFS:
                if dataset in self.datasets:
                    return _result(argv, 0, f"{dataset}\n")
                return _result(argv, 1, err=f"cannot open '{dataset}': dataset does not exist\n")
            case [cmd, "get", "-H", "-o", "value", "mountpoint", dataset] if cmd == ZFS:
                return _result(argv, 0, f"{self.datasets[dataset]}\n")
            case [cmd, "create", dataset] if cmd == ZFS:
                parent, _, leaf = dataset.rpartition("/")
                if self.readonly_pool:
                    return _result(argv, 1, err=f"cannot create '{dataset}': permission denied\n")
                inherited = self.datasets[parent]
                self.datasets[dataset] = "none" if inherited == "none" else f"{inherited}/{leaf}"
                return _result(argv, 0)
        raise AssertionError(f"unexpected command {argv}")

    def state(self) -> tuple:
        return (set(self.loaded), dict(self.rc), dict(self.datasets))


class AsyncFakeFreeBSD(FakeFreeBSD):
    """The same host behind an async runner, as kleened.host.cmd.run is."""

    async def __call__(self, argv: Sequence[str], *, timeout: float) -> CommandResult:  # type: ignore[override]
        await asyncio.sleep(0)
        return FakeFreeBSD.__call__(self, argv, timeout=timeout)


def configured_host() -> FakeFreeBSD:
    return FakeFreeBSD(
        loaded=set(MODULES),
        rc={(file, var): "YES" for var, file in RC_VARS},
        datasets={"zroot": "/zroot", **{ds: "/" + ds for ds in DATASETS}},
    )


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    etc = tmp_path / "usr/local/etc/kleened"
    etc.mkdir(parents=True)
    (etc / "pf.conf.kleene.sample").write_text("### KLEENED MACROS START ###\n")
    loader = tmp_path / "loader.conf"
    loader.write_text('zfs_load="YES"\nkern.racct.enable=1\n')
    return {
        "template": etc / "pf.conf.kleene",
        "sample": etc / "pf.conf.kleene.sample",
        "loader": loader,
        "data_root": tmp_path / "var/lib/kleened",
    }


def freebsd_init(
    fake: FakeFreeBSD, paths: dict[str, Path], *, dry_run: bool, storage: str = "zfs", **host
) -> tuple[int, list[str]]:
    settings = StandInSettings(ROOT, storage, paths["data_root"], paths["template"])
    out = io.StringIO()
    code = run_init(
        settings,
        dry_run=dry_run,
        out=out,
        system="FreeBSD",
        runner=fake,
        host=HostPaths(loader_conf=paths["loader"], **host),
    )
    return code, out.getvalue().splitlines()


def reads(datasets: Sequence[str] = DATASETS, mountpoint_of_root: bool = True) -> list[list[str]]:
    """The read-only commands of one run, in order."""
    argvs = [[KLDSTAT, "-m", m] for m in MODULES]
    argvs += [[SYSRC, "-n", "-f", file, var] for var, file in RC_VARS]
    argvs.append([ZFS, "list", "-H", "-o", "name", datasets[0]])
    if mountpoint_of_root:
        argvs.append([ZFS, "get", "-H", "-o", "value", "mountpoint", datasets[0]])
    argvs += [[ZFS, "list", "-H", "-o", "name", ds] for ds in datasets[1:]]
    return argvs


# --------------------------------------------------------------------------- FreeBSD


def test_freebsd_configured_host_only_reads(paths):
    fake = configured_host()
    paths["template"].write_text("mine\n")
    code, lines = freebsd_init(fake, paths, dry_run=False)
    assert code == 0
    assert lines == [
        "Verifying kernel module zfs is loaded...OK",
        "Verifying kernel module pf is loaded...OK",
        "Verifying kernel module pflog is loaded...OK",
        "Verifying kernel module if_bridge is loaded...OK",
        "Verifying if 'zfs_load' is set to \"YES\" in /boot/loader.conf...OK",
        "Verifying if 'zfs_enable' is set to \"YES\" in /etc/rc.conf...OK",
        "Verifying if 'pf_load' is set to \"YES\" in /boot/loader.conf...OK",
        "Verifying if 'pf_enable' is set to \"YES\" in /etc/rc.conf...OK",
        "Verifying if 'pflog_enable' is set to \"YES\" in /etc/rc.conf...OK",
        "Verifying if zfs dataset zroot/kleene exists...OK",
        "Verifying if zfs dataset zroot/kleene/image exists...OK",
        "Verifying if zfs dataset zroot/kleene/container exists...OK",
        "Verifying if zfs dataset zroot/kleene/volumes exists...OK",
        f"Verifying pf template {paths['template']} exists...OK",
        "Verifying rctl is enabled...OK",
    ]
    assert fake.calls == reads()
    assert paths["template"].read_text() == "mine\n"  # an edited template is kept


@pytest.mark.parametrize("runner_kind", [FakeFreeBSD, AsyncFakeFreeBSD])
def test_freebsd_fresh_host_is_set_up(paths, runner_kind):
    fake = runner_kind()
    code, lines = freebsd_init(fake, paths, dry_run=False)
    assert code == 0
    assert lines == [
        *(
            f"Verifying kernel module {m} is loaded...not loaded, trying to load..OK"
            for m in MODULES
        ),
        *(
            f"Verifying if '{var}' is set to \"YES\" in {file}...not enabled, enabling...OK"
            for var, file in RC_VARS
        ),
        *(
            f"Verifying if zfs dataset {ds} exists...does not exist, creating...OK"
            for ds in DATASETS
        ),
        f"Verifying pf template {paths['template']} exists..."
        f"does not exist, installing {paths['sample']}...OK",
        "Verifying rctl is enabled...OK",
    ]
    expected = []
    for m in MODULES:
        expected += [[KLDSTAT, "-m", m], [KLDLOAD, m]]
    for var, file in RC_VARS:
        # var=YES: no shell removes quotes from an argument vector
        expected += [[SYSRC, "-n", "-f", file, var], [SYSRC, "-n", "-f", file, f"{var}=YES"]]
    expected += [[ZFS, "list", "-H", "-o", "name", ROOT], [ZFS, "create", ROOT]]
    expected.append([ZFS, "get", "-H", "-o", "value", "mountpoint", ROOT])
    for ds in DATASETS[1:]:
        expected += [[ZFS, "list", "-H", "-o", "name", ds], [ZFS, "create", ds]]
    assert fake.calls == expected
    assert fake.loaded == set(MODULES)
    assert all(fake.rc[(file, var)] == "YES" for var, file in RC_VARS)
    assert fake.datasets[f"{ROOT}/volumes"] == "/zroot/kleene/volumes"
    assert paths["template"].read_text() == paths["sample"].read_text()
    assert paths["template"].stat().st_mode & 0o777 == 0o644
    # and a second run finds everything in place
    fake.calls.clear()
    assert freebsd_init(fake, paths, dry_run=False)[0] == 0
    assert fake.calls == reads()


def test_freebsd_dry_run_prints_the_same_and_changes_nothing(paths):
    real_lines = freebsd_init(FakeFreeBSD(), paths, dry_run=False)[1]
    paths["template"].unlink()

    fake = FakeFreeBSD()
    before = fake.state()
    code, lines = freebsd_init(fake, paths, dry_run=True)
    assert code == 0
    assert lines == real_lines
    # only reads; the missing root is not created, so it has no mountpoint to check yet
    assert fake.calls == reads(mountpoint_of_root=False)
    assert fake.state() == before
    assert not paths["template"].exists()


def test_freebsd_partly_configured_host(paths):
    fake = configured_host()
    fake.loaded.discard("pf")
    fake.rc[(RC, "pf_enable")] = "NO"
    del fake.rc[(LOADER, "zfs_load")]
    for ds in DATASETS[2:]:
        del fake.datasets[ds]
    paths["template"].write_text("x\n")
    code, lines = freebsd_init(fake, paths, dry_run=False)
    assert code == 0
    assert lines[1] == "Verifying kernel module pf is loaded...not loaded, trying to load..OK"
    assert lines[4] == (
        "Verifying if 'zfs_load' is set to \"YES\" in /boot/loader.conf..."
        "not enabled, enabling...OK"
    )
    assert lines[7] == (
        "Verifying if 'pf_enable' is set to \"YES\" in /etc/rc.conf...not enabled, enabling...OK"
    )
    assert lines[9:13] == [
        "Verifying if zfs dataset zroot/kleene exists...OK",
        "Verifying if zfs dataset zroot/kleene/image exists...OK",
        "Verifying if zfs dataset zroot/kleene/container exists...does not exist, creating...OK",
        "Verifying if zfs dataset zroot/kleene/volumes exists...does not exist, creating...OK",
    ]
    changes = [argv for argv in fake.calls if argv not in reads()]
    assert changes == [
        [KLDLOAD, "pf"],
        [SYSRC, "-n", "-f", LOADER, "zfs_load=YES"],
        [SYSRC, "-n", "-f", RC, "pf_enable=YES"],
        [ZFS, "create", f"{ROOT}/container"],
        [ZFS, "create", f"{ROOT}/volumes"],
    ]


def test_freebsd_dry_run_of_partly_configured_host_checks_the_existing_root(paths):
    fake = configured_host()
    fake.loaded.discard("if_bridge")
    del fake.datasets[f"{ROOT}/image"]
    before = fake.state()
    code, lines = freebsd_init(fake, paths, dry_run=True)
    assert code == 0
    assert "Verifying kernel module if_bridge is loaded...not loaded, trying to load..OK" in lines
    assert (
        "Verifying if zfs dataset zroot/kleene/image exists...does not exist, creating...OK"
        in lines
    )
    assert fake.calls == reads()  # with the root's mountpoint: the root exists
    assert fake.state() == before


def test_freebsd_root_without_mountpoint_fails(paths):
    fake = FakeFreeBSD(datasets={"zroot": "none"})
    code, lines = freebsd_init(fake, paths, dry_run=False)
    assert code == 1
    assert lines[-2:] == [
        "Verifying if zfs dataset zroot/kleene exists...does not exist, creating...OK",
        "initialization error: kleened's root zfs filesystem zroot/kleene does not have any "
        "mountpoint. Please set it manually.",
    ]
    assert fake.calls[-1] == [ZFS, "get", "-H", "-o", "value", "mountpoint", ROOT]
    assert f"{ROOT}/image" not in fake.datasets


def test_freebsd_kldload_failure_stops_the_run(paths):
    fake = FakeFreeBSD(unloadable={"pf"})
    code, lines = freebsd_init(fake, paths, dry_run=False)
    assert code == 1
    assert lines == [
        "Verifying kernel module zfs is loaded...not loaded, trying to load..OK",
        "Verifying kernel module pf is loaded...not loaded, trying to load..failed",
        "initialization error: kldload: can't load pf: No such file or directory",
    ]
    assert fake.calls[-1] == [KLDLOAD, "pf"]


def test_freebsd_dataset_creation_failure(paths):
    fake = configured_host()
    del fake.datasets[f"{ROOT}/volumes"]
    fake.readonly_pool = True
    code, lines = freebsd_init(fake, paths, dry_run=False)
    assert code == 1
    assert lines[-2:] == [
        "Verifying if zfs dataset zroot/kleene/volumes exists...does not exist, creating...failed",
        "initialization error: could not create ZFS dataset zroot/kleene/volumes: "
        "cannot create 'zroot/kleene/volumes': permission denied",
    ]


def test_freebsd_without_a_template_to_install(paths, tmp_path):
    nowhere = (tmp_path / "a.sample", tmp_path / "b")
    for dry_run in (False, True):
        code, lines = freebsd_init(
            configured_host(), paths, dry_run=dry_run, pf_template_sources=nowhere
        )
        assert code == 1
        assert lines[-2:] == [
            f"Verifying pf template {paths['template']} exists...failed",
            f"initialization error: no copy of pf.conf.kleene to install "
            f"(looked for {nowhere[0]}, {nowhere[1]})",
        ]


def test_freebsd_template_sources_in_order(paths):
    """Next to the configured path (`make install`), under the interpreter's
    prefix, then in the source tree (running from a checkout)."""
    settings = StandInSettings(ROOT, "zfs", paths["data_root"], paths["template"])
    init = Init(settings=settings, dry_run=True, out=io.StringIO(), runner=no_commands)
    checkout = Path(hostinit_freebsd.__file__).resolve().parent.parent
    assert hostinit_freebsd.pf_template_sources(init) == (
        paths["sample"],
        Path(sys.prefix, "etc/kleened/pf.conf.kleene.sample"),
        checkout / "etc" / "pf.conf.kleene",
    )


@pytest.mark.parametrize(
    ("loader_conf", "enabled"),
    [
        ("kern.racct.enable=1\n", True),
        ('kern.racct.enable="1"\n', True),
        ('zfs_load="YES"\n kern.racct.enable = "1"  # rctl\n', True),
        ("#kern.racct.enable=1\n", False),
        ("kern.racct.enable=1\nkern.racct.enable=0\n", False),
        ("kern.racct.enable=10\n", False),
        ("", False),
        (None, False),  # no loader.conf at all
    ],
)
def test_freebsd_rctl_hint(paths, loader_conf, enabled):
    if loader_conf is None:
        paths["loader"].unlink()
    else:
        paths["loader"].write_text(loader_conf)
    fake = configured_host()
    paths["template"].write_text("x\n")
    code, lines = freebsd_init(fake, paths, dry_run=False)
    assert code == 0  # a hint, never a failure
    if enabled:
        assert lines[-1] == "Verifying rctl is enabled...OK"
    else:
        assert lines[-3:] == RCTL_HINT
    assert fake.calls == reads()


def test_freebsd_dir_storage_creates_the_data_root(paths):
    fake = configured_host()
    paths["template"].write_text("x\n")
    code, lines = freebsd_init(fake, paths, dry_run=False, storage="dir")
    assert code == 0
    assert (
        f"Verifying if directory {paths['data_root']} exists...does not exist, creating...OK"
        in (lines)
    )
    assert paths["data_root"].stat().st_mode & 0o777 == 0o700
    assert not any(argv[0] == ZFS for argv in fake.calls)


def test_freebsd_with_the_real_settings_object(paths):
    settings = settings_from_mapping(
        {"pf_config_template_path": str(paths["template"])}, system="FreeBSD"
    )
    fake = FakeFreeBSD()
    out = io.StringIO()
    code = run_init(
        settings,
        dry_run=False,
        out=out,
        system="FreeBSD",
        runner=fake,
        host=HostPaths(loader_conf=paths["loader"]),
    )
    assert code == 0, out.getvalue()
    assert set(DATASETS) <= set(fake.datasets)


def test_freebsd_commands_missing_on_this_host_fail_cleanly(paths):
    """The default runner (kleened.host.cmd.run) against a host without kldstat."""
    if Path(KLDSTAT).exists():
        pytest.skip("this host has kldstat")
    out = io.StringIO()
    settings = StandInSettings(ROOT, "zfs", paths["data_root"], paths["template"])
    code = run_init(settings, dry_run=True, out=out, system="FreeBSD")
    assert code == 1
    assert out.getvalue().splitlines() == [
        "Verifying kernel module zfs is loaded...failed",
        "initialization error: could not run /sbin/kldstat: No such file or directory",
    ]


def test_runner_that_cannot_start_a_command(paths):
    def runner(argv: Sequence[str], *, timeout: float) -> CommandResult:
        raise CommandNotStarted(f"could not run {argv[0]}: Permission denied")

    code, lines = freebsd_init(runner, paths, dry_run=True)  # type: ignore[arg-type]
    assert code == 1
    assert lines[-1] == "initialization error: could not run /sbin/kldstat: Permission denied"


def test_unknown_platform(paths):
    out = io.StringIO()
    settings = StandInSettings(ROOT, "zfs", paths["data_root"], paths["template"])
    assert run_init(settings, dry_run=True, out=out, system="Darwin") == 1
    assert out.getvalue() == "initialization error: kleened does not run on Darwin\n"


# --------------------------------------------------------------------------- Linux


def linux_init(settings, *, dry_run: bool, which=None, runner=None) -> tuple[int, list[str]]:
    out = io.StringIO()
    host = HostPaths(which=which) if which else HostPaths()
    code = run_init(settings, dry_run=dry_run, out=out, system="Linux", runner=runner, host=host)
    return code, out.getvalue().splitlines()


def no_commands(argv: Sequence[str], *, timeout: float) -> CommandResult:
    raise AssertionError(f"unexpected command {argv}")


def without(*names: str):
    def which(name: str) -> str | None:
        return None if name in names else f"/usr/bin/{name}"

    return which


def test_linux_reports_what_is_missing_and_changes_nothing(tmp_path):
    settings = StandInSettings("kleene", "dir", tmp_path / "data", tmp_path / "pf")
    code, lines = linux_init(
        settings, dry_run=False, which=without("nft", "unshare", "cc", "gcc", "clang")
    )
    assert code == 1
    assert "Verifying nft... missing" in lines
    assert "Verifying C compiler (cc)... missing" in lines
    assert "Verifying unshare... missing (optional: entering jails by hand)" in lines
    assert "Verifying ip... OK" in lines
    assert lines[-2:] == [
        "Install what is missing with: apt-get install nftables gcc util-linux",
        "initialization error: missing nft, C compiler (cc)",
    ]
    assert not settings.data_root.exists()  # nothing is created while something is missing


def test_linux_missing_optional_tools_only_inform(tmp_path):
    settings = StandInSettings("kleene", "dir", tmp_path / "data", tmp_path / "pf")
    code, lines = linux_init(settings, dry_run=False, which=without("nsenter"))
    assert code == 0, lines
    assert "Verifying nsenter... missing (optional: entering jails by hand)" in lines
    assert "Install what is missing with: apt-get install util-linux" in lines
    assert settings.data_root.is_dir()


def test_linux_zfs_storage_needs_the_zfs_tools(tmp_path):
    settings = StandInSettings("tank/kleene", "zfs", tmp_path / "data", tmp_path / "pf")
    code, lines = linux_init(
        settings, dry_run=True, which=without("zfs", "zpool"), runner=no_commands
    )
    assert code == 1
    assert [line for line in lines if line.startswith(("Verifying zfs", "Verifying zpool"))] == [
        "Verifying zfs... missing",
        "Verifying zpool... missing",
    ]
    assert lines[-2:] == [
        "Install what is missing with: apt-get install zfs-fuse",
        "initialization error: missing zfs, zpool",
    ]


def test_linux_zfs_pool_must_answer(tmp_path):
    calls = []

    def runner(argv: Sequence[str], *, timeout: float) -> CommandResult:
        calls.append(list(argv))
        return _result(argv, 1, err="connect: No such file or directory\n")

    settings = StandInSettings("tank/kleene", "zfs", tmp_path / "data", tmp_path / "pf")
    code, lines = linux_init(settings, dry_run=False, which=without(), runner=runner)
    assert code == 1
    assert calls == [["zpool", "list", "-H", "-o", "name", "tank"]]
    assert lines[-2:] == [
        "Verifying zfs pool tank... missing (is zfs-fuse running and the pool imported?)",
        "initialization error: missing zfs pool of tank/kleene",
    ]
    assert not settings.data_root.exists()


def test_linux_init_creates_a_private_data_root(tmp_path):
    settings = settings_from_mapping({"data_root": str(tmp_path / "state/kleened")}, system="Linux")
    code, lines = linux_init(settings, dry_run=False)
    assert code == 0, lines
    assert lines[-1] == (
        f"Verifying if directory {settings.data_root} exists...does not exist, creating...OK"
    )
    assert settings.data_root.stat().st_mode & 0o777 == 0o700
    code, lines = linux_init(settings, dry_run=False)
    assert (code, lines[-1]) == (0, f"Verifying if directory {settings.data_root} exists...OK")


# A dry run in its own mount and network namespaces (private propagation), so
# that mounts and interfaces other processes on this host make meanwhile do not
# show up; anything the dry run itself mounted or created would.
DRY_RUN_IN_NAMESPACE = """
import io, json, subprocess, sys
from pathlib import Path
from kleened.config import settings_from_mapping
from kleened.hostinit import run_init

def snapshot():
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           timeout=10, check=True).stdout
    return {"mounts": Path("/proc/self/mountinfo").read_text().splitlines(),
            "links": links.splitlines()}

settings = settings_from_mapping(json.loads(sys.argv[1]), system="Linux")
before = snapshot()
out = io.StringIO()
code = run_init(settings, dry_run=True, out=out, system="Linux")
print(json.dumps({"code": code, "output": out.getvalue(), "before": before, "after": snapshot()}))
"""


def _tree(root: Path) -> dict[str, tuple[int, int, int]] | None:
    if not root.exists():
        return None
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def dry_run_in_namespace(config: dict) -> dict:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount and network namespace")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--net", "--",
         sys.executable, "-c", DRY_RUN_IN_NAMESPACE, json.dumps(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("existing", [False, True], ids=["no-data-root", "data-root"])
def test_linux_dry_run_changes_nothing(tmp_path, existing):
    data_root = tmp_path / "kleened"
    if existing:
        (data_root / "datasets/img").mkdir(parents=True)
        (data_root / "metadata.sqlite").write_bytes(b"db")
        data_root.chmod(0o750)
    files_before = _tree(data_root)

    result = dry_run_in_namespace({"storage": "dir", "data_root": str(data_root)})

    assert result["code"] == 0, result["output"]
    assert result["after"]["mounts"] == result["before"]["mounts"]
    assert result["after"]["links"] == result["before"]["links"]
    assert _tree(data_root) == files_before
    last = result["output"].splitlines()[-1]
    if existing:
        assert last == f"Verifying if directory {data_root} exists...OK"
    else:
        assert last == f"Verifying if directory {data_root} exists...does not exist, creating...OK"


def _zfs_root(request: pytest.FixtureRequest):
    try:
        return request.getfixturevalue("zfs_root")
    except pytest.FixtureLookupError:
        pytest.skip("the zfs_root fixture (tests.fixtures.zfs) is not registered in conftest")


def _datasets_under(zfs: str, dataset: str) -> list[str]:
    done = subprocess.run(
        [zfs, "list", "-H", "-r", "-o", "name,mountpoint", dataset],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.splitlines()


@pytest.mark.zfs
def test_linux_zfs_dry_run_creates_no_dataset(request, tmp_path):
    zfs_root = _zfs_root(request)
    root = f"{zfs_root.dataset}/kleene"
    before = _datasets_under(zfs_root.pool.zfs, zfs_root.dataset)

    result = dry_run_in_namespace(
        {"storage": "zfs", "kleene_root": root, "data_root": str(tmp_path / "data")}
    )

    assert result["code"] == 0, result["output"]
    assert result["output"].splitlines()[-4:] == [
        f"Verifying if zfs dataset {ds} exists...does not exist, creating...OK"
        for ds in (root, f"{root}/image", f"{root}/container", f"{root}/volumes")
    ]
    assert _datasets_under(zfs_root.pool.zfs, zfs_root.dataset) == before
    assert result["after"]["mounts"] == result["before"]["mounts"]
    assert not (tmp_path / "data").exists()


@pytest.mark.zfs
def test_linux_zfs_init_creates_the_datasets(request, tmp_path):
    zfs_root = _zfs_root(request)
    root = f"{zfs_root.dataset}/kleene"
    settings = settings_from_mapping(
        {"storage": "zfs", "kleene_root": root, "data_root": str(tmp_path / "data")},
        system="Linux",
    )
    code, lines = linux_init(settings, dry_run=False)
    assert code == 0, lines
    base = zfs_root.mountpoint
    assert _datasets_under(zfs_root.pool.zfs, root) == [
        f"{root}\t{base}/kleene",
        f"{root}/container\t{base}/kleene/container",
        f"{root}/image\t{base}/kleene/image",
        f"{root}/volumes\t{base}/kleene/volumes",
    ]
    code, lines = linux_init(settings, dry_run=False)
    assert code == 0
    assert lines[-4:] == [
        f"Verifying if zfs dataset {ds} exists...OK"
        for ds in (root, f"{root}/image", f"{root}/container", f"{root}/volumes")
    ]


def test_cli_init_dry_run(tmp_path, capsys):
    """`kleened init --dry-run --config FILE`, as the rc.d script's dryinit runs it."""
    from kleened.cli import main

    config = tmp_path / "kleened.yaml"
    config.write_text(f"storage: dir\ndata_root: {tmp_path / 'data'}\n")
    assert main(["init", "--dry-run", "--config", str(config)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Verifying mount... OK"
    assert printed[-1] == (
        f"Verifying if directory {tmp_path / 'data'} exists...does not exist, creating...OK"
    )
    assert not (tmp_path / "data").exists()
