"""The benchmark suite behind `benchmarks/run`: every row beside its baseline from
the same run, as a table, `benchmarks/results/<date>.json` and a PNG chart.

A daemon of its own (dir storage, temporary data_root and socket, never the
system's), a busybox base image and a ~200 MB one served from 127.0.0.1, and
a zfs-fuse pool of its own for the ZFS rows. Everything is removed at the end.
Measurements only: nothing here decides CI.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks import cases_data, cases_images, cases_run
from benchmarks.common import Budget, Row
from benchmarks.context import Context
from benchmarks.daemon import Api, cleanup_containers, start_daemon, stop_daemon
from benchmarks.images import busybox_tree, make_tar, padded_tree, serve
from benchmarks.jail_start import Floors

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
BIG_MB = 200
README_START, README_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"

Case = Callable[[Context], Awaitable[None]]


def cases(big_mb: float) -> dict[str, Case]:
    return {
        "run": cases_run.run_cycle,
        "exec": cases_run.exec_cycle,
        "throughput": cases_run.throughput,
        "streaming": cases_data.streaming,
        "list": cases_data.list_scaling_and_memory,
        "create": lambda ctx: cases_images.create_cost(ctx, big_mb),
        "build": cases_images.build,
    }


def machine() -> dict[str, str]:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    os_name = "unknown"
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    return {
        "os": os_name,
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "memory": f"{mem_kb / (1 << 20):.0f} GB",
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------ output


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    lines = [
        "| row | value | baseline | ratio | target | met |",
        "|---|---:|---|---:|---|---|",
    ]
    for r in rows:
        value = f"{_fmt(r.value)} {r.unit}".strip() if r.value is not None else r.note
        baseline = f"{r.baseline_name}: {_fmt(r.baseline)}" if r.baseline_name else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        note = f" ({r.note})" if r.note and r.value is not None else ""
        lines.append(f"| {r.section}: {r.name}{note} | {value} | {baseline} | {ratio} | "
                     f"{r.target} | {met} |")  # fmt: skip
    return "\n".join(lines)


def chart(rows: list[Row], title: str, path: Path) -> Path | None:
    """Each row's ratio to its baseline (log scale); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [r for r in rows if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(shown) + 1.5))
    labels = [f"{r.section}: {r.name}"[:70] for r in shown]
    ratios = [r.ratio for r in shown]
    colours = [{True: "tab:green", False: "tab:red", None: "tab:gray"}[r.met] for r in shown]
    ax.barh(range(len(shown)), ratios, color=colours)
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, r in enumerate(shown):
        ax.text(ratios[i], i, f" {_fmt(r.value)} {r.unit} vs {_fmt(r.baseline)}", va="center",
                fontsize=7)  # fmt: skip
    ax.set_xlabel("value / baseline from the same run (log); green: target met, red: missed")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def update_readme(markdown: str) -> bool:
    text = README.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    README.write_text(f"{head}{README_START}\n{markdown}\n{README_END}{tail}")
    return True


# ------------------------------------------------------------------ running


def profile(directory: Path, case: str, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the daemon during one case: collapsed stacks, one per line."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("no py-spy: pip install py-spy to profile", file=sys.stderr)
        return None
    directory.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
    argv += ["--output", str(directory / f"{case}.txt"), "--nonblocking"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the case starts
    return process


def _unmount_under(path: Path) -> None:
    """Last resort for a case that failed half-way: nothing stays mounted."""
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(path))
    ]
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


async def suite(args: argparse.Namespace) -> list[Row]:
    budget = Budget(args.budget)
    tmp = Path(tempfile.mkdtemp(prefix="kleened-bench-"))
    rows: list[Row] = []
    daemon = None
    try:
        print(f"preparing images under {tmp} ...", flush=True)
        archives = tmp / "archives"
        archives.mkdir()
        busybox = busybox_tree(tmp / "busybox")
        make_tar(busybox, archives / "rootfs.tar")
        big, size, files = padded_tree(tmp / "big", BIG_MB)
        make_tar(big, archives / "big.tar")
        shutil.rmtree(big)
        big_mb = size / (1 << 20)
        print(f"big image: {big_mb:.0f} MB in {files} files", flush=True)
        with serve(archives) as url:
            daemon = start_daemon(tmp / "daemon")
            api = Api(daemon.socket)
            await api.create_image(f"{url}/rootfs.tar", "base")
            ctx = Context(
                tmp=tmp, daemon=daemon, api=api, floors=Floors(tmp / "floors", busybox),
                busybox=busybox, archive_url=url, runs=args.runs, budget=budget, rows=rows,
            )  # fmt: skip
            for name, case in cases(big_mb).items():
                if args.only and name not in args.only:
                    continue
                if budget.left() <= 0:
                    rows.append(Row(name, "(all)", None, "", note="skipped: out of time"))
                    continue
                began = time.monotonic()
                print(f"-- {name}", flush=True)
                profiler = profile(args.profile, name, ctx.pid) if args.profile else None
                try:
                    await case(ctx)
                except Exception as err:  # one broken case must not hide the others
                    traceback.print_exc()
                    rows.append(Row(name, "(case failed)", None, "", note=f"failed: {err}"))
                finally:
                    if profiler is not None:
                        profiler.send_signal(signal.SIGINT)
                        profiler.wait(60)
                print(f"   {time.monotonic() - began:.1f} s", flush=True)
            try:
                await cleanup_containers(ctx.api)
            finally:
                await ctx.api.close()
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        _unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="kleened benchmarks (see README)")
    parser.add_argument("--runs", type=int, default=20, help="samples per timed row")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the cases")
    parser.add_argument("--only", nargs="*", choices=list(cases(0)), help="run only these")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument("--profile", type=Path, help="write py-spy stacks of each case here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/run needs root (jails, mounts, zfs-fuse)", file=sys.stderr)
        return 2
    began = time.monotonic()
    rows = asyncio.run(suite(args))
    elapsed = time.monotonic() - began
    when = datetime.datetime.now(datetime.UTC)
    host = machine()
    md = table(rows)
    print()
    print(md)
    print(f"\n{len(rows)} rows in {elapsed:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    stem = when.strftime("%Y-%m-%d")
    result = {
        "date": when.isoformat(timespec="seconds"),
        "machine": host,
        "seconds": round(elapsed, 1),
        "rows": [r.as_dict() for r in rows],
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    where = f"{host['os']}, {host['cpus']} CPUs, {host['memory']}, kernel {host['kernel']}"
    title = f"kleened benchmarks {stem} ({where})"
    png = chart(rows, title, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / f'{stem}.json'}" + (f" and {png}" if png else " (no matplotlib)"))
    if not args.no_readme and not args.only:
        summary = f"Measured {stem} on {where}; {elapsed:.0f} s in all.\n\n{md}\n"
        if png:
            summary += f"\n![benchmark chart](benchmarks/results/{png.name})\n"
        if update_readme(summary):
            print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
