"""The FreeBSD mount driver: exact mount_nullfs/mount/umount vectors (reference §10.3).

The mount table sample below is what `mount --libxo json` prints on a host
with one running container (written from mount(8)'s libxo fields: `special`,
`node`, `fstype`, `opts`); the commands themselves are stood in for by a
recording runner, since they do not exist on this machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from kleened.host.base import MountError, Mounts
from kleened.host.freebsd.mount import (
    FreeBSDMounts,
    MountCommandError,
    MountEntry,
    mount_devfs_argv,
    mount_list_argv,
    mount_nullfs_argv,
    mount_points_under,
    parse_mount_list,
    umount_argv,
)
from kleened.host.freebsd.runner import CommandTimeout

C = "/zroot/kleene/container/3f2a9c1d7e4b"

MOUNT_TABLE = (
    '{"mount": {"mounted": ['
    '{"special":"zroot/ROOT/default","node":"/","fstype":"zfs",'
    '"opts":["local","noatime","nfsv4acls"]}, '
    '{"special":"devfs","node":"/dev","fstype":"devfs"}, '
    '{"special":"zroot/kleene","node":"/zroot/kleene","fstype":"zfs",'
    '"opts":["local","noatime","nfsv4acls"]}, '
    '{"special":"zroot/kleene/container/3f2a9c1d7e4b","node":"' + C + '","fstype":"zfs",'
    '"opts":["local","noatime","nfsv4acls"]}, '
    '{"special":"zroot/kleene/container/3f2a9c1d7e4bff","node":"' + C + 'ff",'
    '"fstype":"zfs","opts":["local","noatime","nfsv4acls"]}, '
    '{"special":"devfs","node":"' + C + '/dev","fstype":"devfs"}, '
    '{"special":"/zroot/kleene/volumes/data","node":"' + C + '/var/db","fstype":"nullfs",'
    '"opts":["local","noatime","nfsv4acls"]}, '
    '{"special":"/usr/home/me/site","node":"' + C + '/var/db/www","fstype":"nullfs",'
    '"opts":["read-only","local","noatime","nfsv4acls"]}, '
    '{"special":"/etc/resolv.conf","node":"' + C + '/etc/resolv.conf","fstype":"nullfs",'
    '"opts":["read-only","local"]}, '
    '{"special":"/tmp/a","node":"' + C + '/mnt","fstype":"nullfs","opts":["local"]}, '
    '{"special":"/tmp/b","node":"' + C + '/mnt","fstype":"nullfs","opts":"local"}'
    "]}}\n"
)


# --------------------------------------------------------------------------- vectors


def test_nullfs_vectors():
    assert mount_nullfs_argv(Path("/zroot/kleene/volumes/data"), Path(f"{C}/var/db")) == [
        "/sbin/mount_nullfs",
        "/zroot/kleene/volumes/data",
        f"{C}/var/db",
    ]
    assert mount_nullfs_argv(Path("/home/me/site"), Path(f"{C}/srv"), read_only=True) == [
        "/sbin/mount_nullfs",
        "-o",
        "ro",
        "/home/me/site",
        f"{C}/srv",
    ]


def test_paths_are_single_arguments_even_with_spaces():
    assert mount_nullfs_argv(Path("/srv/my data"), Path(f"{C}/my data")) == [
        "/sbin/mount_nullfs",
        "/srv/my data",
        f"{C}/my data",
    ]


def test_umount_devfs_and_list_vectors():
    assert umount_argv(Path(f"{C}/var/db")) == ["/sbin/umount", f"{C}/var/db"]
    assert mount_devfs_argv(Path(f"{C}/dev")) == [
        "/sbin/mount",
        "-t",
        "devfs",
        "devfs",
        f"{C}/dev",
    ]
    assert mount_list_argv() == ["/sbin/mount", "--libxo", "json"]
    assert mount_list_argv("devfs") == ["/sbin/mount", "--libxo", "json", "-t", "devfs"]


@pytest.mark.parametrize(
    "build",
    [
        lambda: mount_nullfs_argv(Path("relative"), Path("/mnt")),
        lambda: mount_nullfs_argv(Path("/src"), Path("-f")),
        lambda: umount_argv(Path("mnt")),
        lambda: mount_devfs_argv(Path("dev")),
    ],
)
def test_relative_paths_are_refused(build):
    with pytest.raises(MountError, match="must be an absolute path"):
        build()


# --------------------------------------------------------------------------- parsing


def test_parse_recorded_mount_table():
    entries = parse_mount_list(MOUNT_TABLE)
    assert len(entries) == 11
    assert entries[0] == MountEntry(
        special="zroot/ROOT/default",
        node=Path("/"),
        fstype="zfs",
        opts=("local", "noatime", "nfsv4acls"),
    )
    assert entries[1] == MountEntry(special="devfs", node=Path("/dev"), fstype="devfs")
    assert entries[7].opts[0] == "read-only"
    assert entries[10].opts == ("local",)  # a single-element list written as a string


def test_parse_without_mounts():
    assert parse_mount_list('{"mount": {"mounted": []}}') == []
    assert parse_mount_list('{"mount": {}}') == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (MOUNT_TABLE[:40], "not JSON"),
        ("mount: unknown option --libxo\n", "not JSON"),
        ("[]", "top level is not an object"),
        ('{"mount": []}', "'mount' is not an object"),
        ('{"mount": {"mounted": {}}}', "is not a list"),
        ('{"mount": {"mounted": [1]}}', "not an object"),
        ('{"mount": {"mounted": [{"special": "devfs"}]}}', "no mount point"),
        ('{"mount": {"mounted": [{"node": "/x", "fstype": 3}]}}', "invalid entry for /x"),
        ('{"mount": {"mounted": [{"node": "/x", "opts": {}}]}}', "invalid options for /x"),
    ],
)
def test_malformed_mount_output_is_a_clear_mount_error(text, fragment):
    with pytest.raises(MountError) as caught:
        parse_mount_list(text)
    assert "could not parse the output of /sbin/mount" in str(caught.value)
    assert fragment in str(caught.value)


def test_mount_points_under_a_container_deepest_first():
    points = mount_points_under(parse_mount_list(MOUNT_TABLE), Path(C))
    # deeper first; at equal depth the later mount first (a stacked mount
    # point appears once per mount, each needing its own umount)
    assert points == [
        Path(f"{C}/var/db/www"),
        Path(f"{C}/etc/resolv.conf"),
        Path(f"{C}/var/db"),
        Path(f"{C}/mnt"),
        Path(f"{C}/mnt"),
        Path(f"{C}/dev"),
        Path(C),
    ]
    # a sibling whose name merely starts with the same characters is not included
    assert Path(f"{C}ff") not in points


def test_mount_points_under_a_path_without_mounts():
    assert mount_points_under(parse_mount_list(MOUNT_TABLE), Path("/var/empty")) == []


# --------------------------------------------------------------------------- the driver


class RecordingRunner:
    def __init__(self, *answers: tuple[int, str] | BaseException) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], float]] = []

    async def __call__(self, argv: Sequence[str], *, timeout: float) -> tuple[int, str]:
        self.calls.append((list(argv), timeout))
        assert self.answers, f"unexpected command {argv}"
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def argvs(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls]


def test_the_driver_satisfies_the_protocol():
    assert isinstance(FreeBSDMounts(), Mounts)


async def test_mount_nullfs_runs_the_vector_with_the_timeout():
    run = RecordingRunner((0, ""))
    await FreeBSDMounts(run=run, timeout=7.0).mount_nullfs(
        Path("/src"), Path(f"{C}/dst"), read_only=True
    )
    assert run.calls == [(["/sbin/mount_nullfs", "-o", "ro", "/src", f"{C}/dst"], 7.0)]


async def test_mount_failure_carries_exit_code_and_output():
    output = f"mount_nullfs: {C}/dst: No such file or directory\n"
    run = RecordingRunner((71, output))
    with pytest.raises(MountCommandError) as caught:
        await FreeBSDMounts(run=run).mount_nullfs(Path("/src"), Path(f"{C}/dst"))
    assert str(caught.value) == (
        f"/sbin/mount_nullfs exited abnormally with exit code 71: '{output}'"
    )
    assert (caught.value.returncode, caught.value.output) == (71, output)


async def test_unmount_and_devfs():
    run = RecordingRunner((0, ""), (0, ""))
    mounts = FreeBSDMounts(run=run)
    await mounts.unmount(Path(f"{C}/var/db"))
    await mounts.mount_devfs(Path(f"{C}/dev"))
    assert run.argvs == [["/sbin/umount", f"{C}/var/db"], mount_devfs_argv(Path(f"{C}/dev"))]


async def test_unmount_failure():
    run = RecordingRunner((1, f"umount: {C}/x: not a file system root directory\n"))
    with pytest.raises(MountError, match="/sbin/umount exited abnormally with exit code 1"):
        await FreeBSDMounts(run=run).unmount(Path(f"{C}/x"))


async def test_a_command_that_cannot_finish_is_a_mount_error():
    run = RecordingRunner(CommandTimeout("/sbin/umount did not finish within 30 s"))
    with pytest.raises(MountError, match="did not finish"):
        await FreeBSDMounts(run=run).unmount(Path(f"{C}/x"))


@pytest.mark.parametrize(
    ("target", "mounted"),
    [
        (Path(f"{C}/var/db"), True),
        (Path(f"{C}/var/db/"), True),
        (Path(f"{C}/etc/resolv.conf"), True),
        (Path(f"{C}/var"), False),
        (Path(f"{C}/var/db/www/inner"), False),
    ],
)
async def test_is_mounted_reads_the_mount_table(target, mounted):
    run = RecordingRunner((0, MOUNT_TABLE))
    assert await FreeBSDMounts(run=run).is_mounted(target) is mounted
    assert run.argvs == [["/sbin/mount", "--libxo", "json"]]


async def test_mounted_under_reads_the_mount_table_once():
    run = RecordingRunner((0, MOUNT_TABLE))
    points = await FreeBSDMounts(run=run).mounted_under(Path(f"{C}/var"))
    assert points == [Path(f"{C}/var/db/www"), Path(f"{C}/var/db")]
    assert len(run.calls) == 1


async def test_list_mounts_by_type():
    run = RecordingRunner((0, '{"mount": {"mounted": [{"special":"devfs","node":"/dev"}]}}'))
    entries = await FreeBSDMounts(run=run).list_mounts("devfs")
    assert run.argvs == [["/sbin/mount", "--libxo", "json", "-t", "devfs"]]
    assert [e.node for e in entries] == [Path("/dev")]


async def test_unparseable_mount_table_is_a_mount_error():
    with pytest.raises(MountError, match="could not parse"):
        await FreeBSDMounts(run=RecordingRunner((0, "garbage"))).is_mounted(Path("/x"))
