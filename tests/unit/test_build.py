"""The builder's pure parts: paths, the workdir rewrite, the plan and COPY sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from kleened.api.schemas import ContainerConfig, ImageBuildConfig
from kleened.engine.build import Build, Plan, StepFailed, _join, _with_workdir, load_plan
from kleened.engine.dockerfile import ParseError


def config(context: Path | str, dockerfile: str = "Dockerfile") -> ImageBuildConfig:
    return ImageBuildConfig(
        context=str(context), dockerfile=dockerfile, container_config=ContainerConfig()
    )


def test_join_keeps_absolute_destinations():
    assert _join("/app", "/etc/") == "/etc"  # the caller keeps the trailing slash
    assert _join("/app", "sub") == "/app/sub"
    assert _join("/app", "./a/../b") == "/app/b"
    assert _join("/", "../../x") == "/x"


def test_workdir_rewrite_only_for_shell_form():
    assert _with_workdir(["/bin/sh", "-c", "ls"], "/") == ["/bin/sh", "-c", "ls"]
    assert _with_workdir(["/bin/sh", "-c", "ls"], "/a b") == ["/bin/sh", "-c", "cd '/a b' && ls"]
    assert _with_workdir(["/bin/ls", "-l"], "/app") == ["/bin/ls", "-l"]


def test_build_config_defaults_and_lenient_booleans():
    cfg = ImageBuildConfig.model_validate(
        {"context": "/c", "quiet": "true", "cleanup": False, "container_config": {}}
    )
    assert (cfg.quiet, cfg.cleanup, cfg.dockerfile, cfg.tag) == (True, False, "Dockerfile", "")
    with pytest.raises(ValueError):
        ImageBuildConfig.model_validate({"context": "/c"})  # container_config is required


def test_plan_reads_only_inside_the_context(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM base\nRUN true\n")
    (tmp_path / "secret").write_text("FROM secret-line\n")
    (ctx / "link").symlink_to(tmp_path / "secret")
    plan = load_plan(config(ctx))
    assert [i.line for i in plan.instructions] == ["FROM base", "RUN true"]
    for name in ("../secret", "link", str(tmp_path / "secret")):
        with pytest.raises(ParseError) as err:
            load_plan(config(ctx, name))
        assert "outside the build context" in str(err.value)
        assert "secret-line" not in str(err.value)
    with pytest.raises(ParseError, match=r"Could not open Docker file .*:enoent"):
        load_plan(config(ctx, "Missing"))
    with pytest.raises(ParseError, match="absolute path"):
        load_plan(config("relative/ctx"))


def sources(ctx: Path, *patterns: str) -> list[str]:
    build = Build(
        rt=None, config=config(ctx), plan=Plan(ctx.resolve(), []), image_id="x", emit=None
    )  # type: ignore[arg-type]
    return build._sources(patterns)


def test_copy_sources_are_confined_to_the_context(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "dir/c.txt"):
        (ctx / name).write_text(name)
    (ctx / "out").symlink_to("/etc")
    (ctx / "inner").symlink_to("dir")
    assert sources(ctx, "*.txt") == ["a.txt", "b.txt"]
    assert sources(ctx, "/dir", "inner", ".") == ["dir", "inner", "."]
    for bad in ("../x", "dir/../../x", "out", "out/passwd", "/../etc/passwd"):
        with pytest.raises(StepFailed, match="outside the build context"):
            sources(ctx, bad)
    with pytest.raises(StepFailed, match="matches nothing"):
        sources(ctx, "*.none")
