"""`storage: overlay` end to end: the real daemon and klee, containers as
overlayfs clones of their image, across a build and a daemon restart."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from kleened.host.mountinfo import mounts_under

pytestmark = pytest.mark.e2e
ID = r"[0-9a-f]{12}"


def out(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def test_containers_builds_and_a_restart_on_overlay_storage(
    daemon_factory, archive_server, tmp_path
):
    daemon = daemon_factory(storage="overlay")
    datasets = daemon.config_path.parent / "data" / "datasets"
    out(
        daemon.klee(
            "image", "create", "-t", "base", "fetch", archive_server.url_of("rootfs.tar.gz")
        )
    )

    text = out(daemon.klee("run", "base", "sh", "-c", "echo written > /f; cat /f"))
    assert "written" in text and "exited with exit-code 0" in text
    # the container is a mount over the image, and the image did not change
    overlays = [p for p in mounts_under(datasets) if "/container/" in p]
    assert len(overlays) == 1
    assert (Path(overlays[0]) / "f").read_text() == "written\n"
    assert not list(datasets.glob(".snapshots/**/image@image/f"))

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM base\nRUN echo built > /built\nCMD cat /built\n")
    assert "--> Snapshot created: @" in out(daemon.klee("build", "-t", "app", str(ctx)))
    assert "built" in out(daemon.klee("run", "app"))

    running = re.findall(ID, out(daemon.klee("run", "-d", "base", "sleep", "300")))[0]
    out(daemon.klee("exec", running, "sh", "-c", "echo before > /state"))
    daemon.stop(signal.SIGTERM)
    # a stopped daemon leaves no overlay mounted; the running jail keeps its own
    assert mounts_under(datasets) == []
    daemon.start()
    assert "before" in out(daemon.klee("exec", running, "cat", "/state"))
    out(daemon.klee("stop", running))
    with daemon.client() as client:
        for c in client.get("/containers/list", params={"all": "true"}).json():
            r = client.delete(f"/containers/{c['id']}")
            assert r.status_code == 200, r.text
    assert [p for p in mounts_under(datasets) if "/container/" in p] == []
    # the built image is the build container renamed: still a layered dataset
    assert [p for p in mounts_under(datasets) if "/image/" in p] != []
    daemon.stop(signal.SIGTERM)
    assert mounts_under(datasets) == []
