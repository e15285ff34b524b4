"""bench/: a run leaves no temporary folder and no peer process behind, however it ends.

The scripts' own figures are not checked here (docs/benchmarks.md has them); bench/outbox_replay.py
has its tests in test_outbox.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import reaped, sigterm

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(script: Path, tmp: Path, *args: str) -> subprocess.Popen[str]:
    """``script`` in its own process, its temporary folders made under ``tmp``."""
    tmp.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _left_running(tmp: Path) -> list[str]:
    """The processes still running that a run under `_run` started: they inherited its TMPDIR
    (once the bench has exited they are no longer its children)."""
    time.sleep(0.2)
    left = []
    for p in psutil.process_iter(["environ", "cmdline"]):
        env = p.info["environ"] or {}
        if env.get("TMPDIR") == str(tmp) and p.pid != os.getpid():
            left.append(" ".join(p.info["cmdline"] or []))
    return left


def _script(tmp_path: Path, body: str) -> Path:
    """A bench of a few lines on bench/_common.py, as the real ones are written."""
    path = tmp_path / "bench_script.py"
    path.write_text(
        "import subprocess, sys, time\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "from _common import bench_folder, run_bench, stop\n\n" + textwrap.dedent(body)
    )
    return path


def test_no_bench_makes_a_folder_it_does_not_remove() -> None:
    for script in sorted(BENCH.glob("*.py")):
        text = script.read_text()
        assert "mkdtemp" not in text, f"{script.name}: use _common.bench_folder"
        if (
            "bench_folder(" in text or "TemporaryDirectory(" in text
        ) and script.name != "_common.py":
            # SIGTERM must unwind to the folder's removal, as Ctrl-C does
            assert "sys.exit(run_bench(main))" in text, script.name


def test_sigterm_stops_the_peers_and_removes_the_folder(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        def main() -> None:
            with bench_folder("pb-bench-test-") as folder:
                procs = []
                try:
                    procs.append(subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE))
                    (folder / "gateway.log").write_text("started\\n")
                    print(procs[0].pid, flush=True)
                    time.sleep(60)
                finally:
                    stop(procs)

        sys.exit(run_bench(main))
        """,
    )
    with reaped(_run(script, tmp_path / "tmp")) as proc:
        assert proc.stdout is not None
        peer = psutil.Process(int(proc.stdout.readline()))
        assert len(list((tmp_path / "tmp").iterdir())) == 1
        err = sigterm(proc, 30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "the end of gateway.log" not in err
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not peer.is_running() and _left_running(tmp_path / "tmp") == []


def test_a_failed_run_shows_the_end_of_its_log_then_removes_the_folder(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        def main() -> None:
            with bench_folder("pb-bench-test-") as folder:
                (folder / "gateway.log").write_text("".join(f"line {i}\\n" for i in range(30)))
                raise SystemExit("gateway exited with 1 (the end of its log is above)")

        sys.exit(run_bench(main))
        """,
    )
    proc = _run(script, tmp_path / "tmp")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.index("line 29") < err.index("gateway exited with 1")
    assert "line 9\n" not in err  # the end only
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_forked_worker_stopped_by_its_pool_ends_quietly(tmp_path: Path) -> None:
    """multiprocessing.Pool forks workers that inherit the SIGTERM handler, and terminates them
    with SIGTERM when it closes: they must not unwind as an interrupted bench would. The
    workers here are forked processes terminated as a pool does it (a Pool itself can hang in
    terminate() when a worker dies holding its queue's lock, a CPython race this test does
    not need)."""
    script = _script(
        tmp_path,
        """
        import json, multiprocessing, time

        def main() -> None:
            codes = []
            for _ in range(4):
                worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
                worker.start()
                time.sleep(0.2)  # running its target, as a pool's idle worker waits for tasks
                worker.terminate()  # SIGTERM, as Pool.terminate() sends
                worker.join(10)
                codes.append(worker.exitcode)
            print(json.dumps({"exit_codes": codes}))

        sys.exit(run_bench(main))
        """,
    )
    proc = _run(script, tmp_path / "tmp")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # ended by the signal itself (-15), not by unwinding as an interrupted bench (exit 130)
    assert json.loads(out.splitlines()[-1]) == {"exit_codes": [-signal.SIGTERM] * 4}
    assert "Traceback" not in err and "interrupted" not in err


@pytest.mark.parametrize(
    "script, args",
    [
        ("modbus_server.py", ["--clients", "1", "--seconds", "0.5", "--registers", "8"]),
        (
            "modbus_mqtt.py",
            ["--devices", "1", "--registers", "2", "--duration", "1", "--warmup", "1"],
        ),
        (
            "modbus_mqtt.py",
            ["--devices", "1", "--registers", "2", "--duration", "1", "--warmup", "1"]
            + ["--shadow", "--changing"],
        ),
        ("translator_memory.py", ["--points", "120", "--shots", "0,10", "--seeds", "1"]),
        (
            "anomaly_memory.py",
            ["--bridges", "1", "--points", "4", "--calibration", "60", "--messages", "10"],
        ),
        ("shadow_reports.py", ["--points", "20", "--readings", "20"]),
    ],
)
def test_a_short_run_prints_json_last_and_leaves_nothing(
    tmp_path: Path, script: str, args: list[str]
) -> None:
    proc = _run(BENCH / script, tmp_path / "tmp", *args)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert isinstance(json.loads(out.strip().splitlines()[-1]), dict)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert _left_running(tmp_path / "tmp") == []


def test_the_anomaly_bench_keeps_no_state_in_the_current_folder(tmp_path: Path) -> None:
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BRAIN_STATE_DIR"}
    args = ["--devices", "1", "--points", "4", "--messages", "50"]
    out = subprocess.run(
        [sys.executable, str(BENCH / "anomaly.py"), *args],
        cwd=cwd,
        env={**env, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout.strip().splitlines()[-1]), dict)
    assert list(cwd.iterdir()) == []  # no .protocol-brain/anomaly/bench.json, no .lock
    assert list(tmp.glob("pb-bench-anomaly-*")) == []


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_stops_a_bench_whatever_sigint_is(tmp_path: Path, sigint: str) -> None:
    # A bench started with & by a script has SIGINT ignored: SIGTERM must still stop it.
    script = _script(
        tmp_path,
        """
        import asyncio

        async def wait() -> None:
            print("ready", flush=True)
            await asyncio.sleep(60)

        def main() -> None:
            with bench_folder("pb-bench-test-"):
                asyncio.run(wait())

        sys.exit(run_bench(main))
        """,
    )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint == "ignored" else None
    proc = subprocess.Popen(
        [sys.executable, str(script)], env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore,
    )  # fmt: skip
    with reaped(proc):
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        started = time.monotonic()
        err = sigterm(proc, 30)
    assert proc.returncode == 130 and time.monotonic() - started < 10, err
    assert "Traceback" not in err and "never retrieved" not in err
    assert list(tmp.iterdir()) == []
