"""Faults robaudit survives (issue 21), injected for real on the CPU: a torchrun rank killed or hung
mid-scan and mid-harden, an output write refused by the machine (a file-size limit, a full file
system, a folder made read-only while the scan ran), the harden checkpoint write failing mid-run,
the image folder removed while it is read. Each ends with one line, a documented exit code, the
previous files as they were and no temporary file; harden then resumes from its last checkpoint.

The "Faults" table of docs/exit-codes.md lists each fault with the test here that injects it.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from robaudit.cli.demo import DEMO_MODEL
from robaudit.cli.main import app
from robaudit.errors import WriteError
from robaudit.outputs import TEMP_PREFIX, atomic_write_all

MODEL = str(DEMO_MODEL)
QUICK = [
    "-d",
    "demo",
    "--num-samples",
    "16",
    "--checks",
    "clean,attacks,margins",
    "--attacks",
    "fgsm",
    "--device",
    "cpu",
    "-q",
]
ENV = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"{TEMP_PREFIX}*"))


def robaudit(*args, preexec_fn=None, cwd=None, prefix=(), env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "robaudit", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
        cwd=cwd,
        preexec_fn=preexec_fn,
        timeout=timeout,
    )


# --- output writes the machine refuses ---------------------------------------------------------------


@pytest.mark.parametrize(
    "code, fragment",
    [
        (errno.ENOSPC, "free space on its file system"),
        (errno.EDQUOT, "disk quota"),
        (errno.EFBIG, "ulimit -f"),
        (errno.EACCES, "no longer writable"),
        (errno.EROFS, "read-only"),
        (errno.EIO, "give another output path"),
    ],
)
def test_every_refused_write_is_exit_3_and_changes_no_file(tmp_path, monkeypatch, code, fragment):
    """The class: whatever errno the write of the second of three outputs fails with, nothing is
    replaced (every temporary file is written before any rename) and none is left."""
    import robaudit.outputs as outputs

    files = {tmp_path / name: f"new {name}" for name in ("r.json", "r.html", "t/samples.csv")}
    for path in files:
        path.parent.mkdir(exist_ok=True)
        path.write_text("old")
    real_open, calls = open, []

    def failing_open(path, mode="r", *a, **k):
        calls.append(path)
        if "w" in mode and len(calls) == 2:
            raise OSError(code, os.strerror(code))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(outputs, "open", failing_open, raising=False)
    with pytest.raises(WriteError) as err:
        atomic_write_all(files)
    assert WriteError.exit_code == 3 and fragment in str(err.value) and "r.html" in str(err.value)
    assert all(p.read_text() == "old" for p in files) and temp_files(tmp_path) == []


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("parts")
    for k in (0, 1):
        res = CliRunner().invoke(app, ["scan", MODEL, *QUICK, "--shard", f"{k}/2", "--json", str(d / f"p{k}.json")])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["merge", str(d / "p0.json"), str(d / "p1.json"), "-o", str(d / "r.json"), "-q"])
    assert res.exit_code == 0, res.output
    return d


@pytest.mark.slow
@pytest.mark.parametrize("command", ["scan", "merge", "report"])
def test_a_file_size_limit_is_exit_3_and_the_previous_files_stay(command, parts, tmp_path):
    """RLIMIT_FSIZE (ulimit -f) of 16 KiB, SIGXFSZ ignored so the write fails with EFBIG: the result
    JSON and HTML are larger. One line, exit 3, the previous files byte for byte, no temporary file."""
    outputs = {"r.json": b"old result", "r.html": b"old report"}
    for name, data in outputs.items():
        (tmp_path / name).write_bytes(data)
    args = {
        "scan": ["scan", MODEL, *QUICK, "--json", "r.json", "--html", "r.html"],
        "merge": ["merge", parts / "p0.json", parts / "p1.json", "-o", "r.json", "--html", "r.html"],
        "report": ["report", parts / "r.json", "-o", "r.html"],
    }[command]
    proc = robaudit(*args, preexec_fn=_file_size_limit(16 << 10), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "File too large" in one_line(proc.stderr) and "ulimit -f" in proc.stderr
    assert {n: (tmp_path / n).read_bytes() for n in outputs} == outputs and temp_files(tmp_path) == []


@pytest.mark.slow
def test_a_full_file_system_is_exit_3_and_the_previous_files_stay(tmp_path):
    """A real ENOSPC: a 256 KiB tmpfs (mounting needs root; skipped elsewhere, where the EFBIG test
    and the errno class test above cover the same code path)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        (disk / "r.json").write_bytes(b"old result")
        (disk / "r.html").write_bytes(b"old report")
        proc = robaudit("scan", MODEL, *QUICK, "--json", disk / "r.json", "--html", disk / "r.html", cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert "No space left on device" in one_line(proc.stderr) and "free space" in proc.stderr
        assert (disk / "r.json").read_bytes() == b"old result" and (disk / "r.html").read_bytes() == b"old report"
        assert temp_files(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def _without_root_override() -> list[str]:
    """A command prefix under which permission bits bind: nothing for a normal user; for root,
    setpriv dropping the capabilities that let root write anywhere (skip when that is impossible)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permission bits don't stop root's writes")
    probe = tempfile.mkdtemp()
    try:
        os.chmod(probe, 0o555)
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
        if (
            subprocess.run([*prefix, sys.executable, "-c", f"open({probe!r} + '/x', 'w')"], capture_output=True).returncode
            == 0
        ):
            pytest.skip("this root keeps writing into read-only folders even without CAP_DAC_OVERRIDE")
        return prefix
    finally:
        os.chmod(probe, 0o755)
        shutil.rmtree(probe)


@pytest.mark.slow
def test_a_folder_made_read_only_during_the_scan_is_exit_3(tmp_path):
    """EACCES at write time: the output folder is writable when the scan starts (so check_outputs
    passes) and made read-only while it runs (after the scan, before the writes: a driver wraps the
    scan). One line, exit 3, the previous file intact, no temporary file."""
    prefix = _without_root_override()
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.json").write_bytes(b"old result")
    driver = (
        "import os, sys; import robaudit.cli.scan as s; real = s.scan_command\n"
        "def scan_command(**kw):\n"
        f"    result = real(**kw); os.chmod({str(out)!r}, 0o555); return result\n"
        "s.scan_command = scan_command\n"
        "from robaudit.cli.main import run; sys.argv[0] = 'robaudit'; run()\n"
    )
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", driver, "scan", MODEL, *QUICK, "--json", str(out / "r.json")],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=600,
        )
    finally:
        os.chmod(out, 0o755)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Permission denied" in one_line(proc.stderr) and "no longer writable" in proc.stderr
    assert (out / "r.json").read_bytes() == b"old result" and temp_files(out) == []


# --- the image folder disappearing mid-scan ------------------------------------------------------------


@pytest.mark.parametrize("what", ["the folder", "one image"])
@pytest.mark.parametrize("workers", [0, 1])
def test_the_image_folder_removed_while_the_scan_runs_is_one_line(tmp_path, monkeypatch, what, workers):
    """The folder is listed and probed, then removed (or one image) before its pixels are read:
    exit 3, one line naming the file, no result written, the previous one intact."""
    from PIL import Image

    import robaudit.data as data_module

    folder = tmp_path / "f"
    for k in "abcdefghij":
        (folder / k).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((28, 28), 20 * i, np.uint8)).save(folder / k / f"{i}.png")
    (tmp_path / "classes.txt").write_text("\n".join("abcdefghij"))
    real = data_module.load_image_folder

    def then_remove(*a, **k):
        spec = real(*a, **k)
        shutil.rmtree(folder) if what == "the folder" else (folder / "c" / "1.png").unlink()
        return spec

    monkeypatch.setattr(data_module, "load_image_folder", then_remove)
    (tmp_path / "r.json").write_text("old")
    res = CliRunner().invoke(
        app,
        [
            "scan",
            MODEL,
            "-d",
            f"imagefolder:{folder}",
            "--class-map",
            str(tmp_path / "classes.txt"),
            "--checks",
            "clean",
            "--attacks",
            "fgsm",
            "--device",
            "cpu",
            "-q",
            "--workers",
            str(workers),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 3, res.output
    line = one_line(res.stderr)
    assert "can't be read as an image (FileNotFoundError" in line and ".png" in line
    assert (tmp_path / "r.json").read_text() == "old" and temp_files(tmp_path) == []


# --- harden: the checkpoint write failing mid-run ----------------------------------------------------


def _train_npz(path: Path, n: int = 64) -> Path:
    from robaudit.data import DataRequest, load_dataset

    data = load_dataset("demo", DataRequest(n=n))
    np.savez(path, x=data.x.numpy(), y=data.y.numpy())
    return path


HARDEN = ["--method", "ce-grad", "--batch-size", "32", "--eval-n", "16", "--device", "cpu", "--no-scan", "-q"]


@pytest.mark.slow
def test_a_checkpoint_write_failing_mid_run_stops_with_the_last_one_loadable(tmp_path):
    """The end-of-epoch checkpoint of epoch 2 hits a file-size limit (set by a driver just before
    that write: a real EFBIG from the kernel): exit 3, one line naming OUT.ckpt, epoch 1's checkpoint
    still loadable, no hardened model, no temporary file; --resume then finishes the run."""
    from robaudit.harden.checkpointing import load_state

    data = _train_npz(tmp_path / "d.npz")
    out = tmp_path / "h.safetensors"
    driver = (
        "import resource, signal, sys; import robaudit.harden.trainer as t; real = t.save_state; calls = []\n"
        "def save_state(path, state):\n"
        "    calls.append(path)\n"
        "    if len(calls) == 2:\n"
        "        signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "    return real(path, state)\n"
        "t.save_state = save_state\n"
        "from robaudit.cli.main import run; sys.argv[0] = 'robaudit'; run()\n"
    )
    args = ["harden", MODEL, "-d", str(data), "--epochs", "3", *HARDEN, "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", driver, *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert "h.safetensors.ckpt: File too large" in line
    state = load_state(tmp_path / "h.safetensors.ckpt")
    assert (state["epoch"], state["step"]) == (1, 0)
    assert not out.exists() and temp_files(tmp_path) == []
    resumed = robaudit(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert out.exists() and not (tmp_path / "h.safetensors.ckpt").exists()


# --- torchrun: a rank killed or hung ------------------------------------------------------------------


def _ranks(run_id: str) -> dict[int, int]:
    """{rank: pid} of the torchrun workers whose environment carries ``ROBAUDIT_FAULT_TEST=run_id``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if env.get(b"ROBAUDIT_FAULT_TEST") == run_id.encode() and b"TORCHELASTIC_RUN_ID" in env and b"RANK" in env:
            found[int(env[b"RANK"])] = int(entry.name)
    return found


def _both_ranks(run_id: str) -> dict[int, int] | None:
    ranks = _ranks(run_id)
    return ranks if len(ranks) == 2 else None


@pytest.fixture
def torchrun():
    """Start ``torchrun --standalone --nproc_per_node=2 -m robaudit ARGS`` (its workers marked by a run
    id in their environment); whatever happens, the test leaves no process of it behind."""
    started: list[tuple[subprocess.Popen, str]] = []

    def start(args: list, cwd: Path, options: tuple = (), **env) -> tuple[subprocess.Popen, str]:
        run_id = f"{os.getpid()}-{len(started)}-{time.monotonic_ns()}"
        # output to a file: a stopped worker would hold a pipe open after torchrun has exited
        log = open(cwd / f"torchrun-{len(started)}.log", "w+")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                *options,
                "-m",
                "robaudit",
                *map(str, args),
            ],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(ENV, ROBAUDIT_FAULT_TEST=run_id, **env),
            start_new_session=True,
        )
        proc.log = log  # type: ignore[attr-defined]
        started.append((proc, run_id))
        return proc, run_id

    yield start
    for proc, run_id in started:
        for pid in _ranks(run_id).values():
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.log.close()


def _wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _output(proc: subprocess.Popen) -> str:
    proc.log.flush()  # type: ignore[attr-defined]
    return Path(proc.log.name).read_text(errors="replace")  # type: ignore[attr-defined]


def _finish(proc: subprocess.Popen, seconds: float) -> tuple[int, str, float]:
    """(torchrun's exit code, its output, seconds it took to end); AssertionError if longer."""
    t0 = time.monotonic()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the run did not end within {seconds} s of the fault: {_output(proc)[-2000:]}") from None
    return proc.returncode, _output(proc), time.monotonic() - t0


def _scanning(proc: subprocess.Popen, run_id: str) -> dict[int, int]:
    """Both ranks' pids once rank 0 has started the attack check (both ranks attack their shards by
    then: the checks before it take a second), plus 1 s into it. The fault must land inside the
    shard's work: a stop that lands in the poll between a wait's release and the next collective
    (one poll, 0.2 s) is beyond what heartbeats can see, and a scan that ends before its fault
    proves nothing (measured: a PGD-only scan of the demo data ended 5 s after it started, so a
    fixed delay from the start landed in that window)."""
    _wait_for(lambda: "check 3/6: attacks" in _output(proc) or proc.poll() is not None, 300, "the attacks to start")
    ranks = _both_ranks(run_id)
    time.sleep(1)
    assert proc.poll() is None and ranks, f"the scan ended before the fault: {_output(proc)[-2000:]}"
    return ranks


# ≈ 10 s of attacks per rank on 500 samples here (APGD-CE at two radii small enough that most samples
# resist to the last step)
SCAN_LONG = [MODEL, "-d", "demo", "--num-samples", "1000", "--device", "cpu", "--attacks", "apgd-ce"]
SCAN_LONG += ["--eps", "0.005,0.01", "--json", "r.json"]


@pytest.mark.slow
def test_a_torchrun_scan_with_a_rank_killed_ends_at_once_without_a_result(tmp_path, torchrun):
    """SIGKILL of rank 1 mid-scan: torchrun stops rank 0 (SIGTERM, which robaudit turns into an
    interrupt) within seconds, not after a collective timeout; non-zero exit, no result file, no
    temporary file, no worker left."""
    proc, run_id = torchrun(["scan", *SCAN_LONG], tmp_path)
    ranks = _scanning(proc, run_id)
    os.kill(ranks[1], signal.SIGKILL)
    code, err, took = _finish(proc, 60)
    assert code != 0 and took < 60, err[-3000:]
    assert "exitcode  : -9" in err  # torchrun's summary names the killed rank
    assert not (tmp_path / "r.json").exists() and temp_files(tmp_path) == [] and _ranks(run_id) == {}


@pytest.mark.slow
def test_a_torchrun_scan_with_a_rank_hung_names_it_after_the_peer_timeout(tmp_path, torchrun):
    """SIGSTOP of rank 1 (a hung process or a lost node: nothing closes its connections, torchrun
    sees nothing): rank 0, waiting for the shards by heartbeat instead of inside the gather, names
    rank 1 after $ROBAUDIT_PEER_TIMEOUT (5 s here; 120 by default) instead of blocking for the
    process group's timeout; exit 4, no result file."""
    proc, run_id = torchrun(["scan", *SCAN_LONG], tmp_path, ROBAUDIT_PEER_TIMEOUT="5")  # torchrun then waits
    # ~30 s before it SIGKILLs the stopped worker: most of this test's time
    ranks = _scanning(proc, run_id)
    os.kill(ranks[1], signal.SIGSTOP)
    code, err, took = _finish(proc, 300)
    ours = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(ours) == 1 and "rank 1 stopped responding: no heartbeat for" in ours[0], err[-3000:]
    assert code != 0 and "exitcode  : 4" in err
    assert not (tmp_path / "r.json").exists() and temp_files(tmp_path) == []


@pytest.mark.slow
def test_a_torchrun_harden_with_a_rank_killed_resumes_from_its_checkpoint(tmp_path, torchrun):
    """SIGKILL of rank 1 after the first epoch's checkpoint: the run ends within seconds, non-zero,
    without a hardened model; the checkpoint loads and --resume on one process (the same global
    batch) finishes the run."""
    from robaudit.harden.checkpointing import load_state

    data = _train_npz(tmp_path / "d.npz", n=512)
    out = tmp_path / "h.safetensors"
    ckpt = tmp_path / "h.safetensors.ckpt"
    common = [
        "harden",
        MODEL,
        "-d",
        data,
        "--epochs",
        "6",
        "--method",
        "jacobian",
        "--eval-n",
        "16",
        "--device",
        "cpu",
        "--no-scan",
        "-q",
        "--out",
        out,
    ]
    proc, run_id = torchrun([*common, "--batch-size", "16"], tmp_path)
    _wait_for(lambda: ckpt.exists() or proc.poll() is not None, 300, "the first epoch's checkpoint")
    ranks = _ranks(run_id)
    assert proc.poll() is None and len(ranks) == 2, "the run ended before the fault"
    os.kill(ranks[1], signal.SIGKILL)
    code, err, took = _finish(proc, 60)
    assert code != 0 and took < 60, err[-3000:]
    assert not out.exists() and temp_files(tmp_path) == [] and _ranks(run_id) == {}
    state = load_state(ckpt)
    assert state["epoch"] >= 1 and state["epoch"] < 6
    resumed = robaudit(*common, "--batch-size", "32", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert out.exists() and not ckpt.exists()


# --- the pieces: heartbeats, and a lost peer's error -----------------------------------------------------


def test_a_wait_names_the_rank_whose_heartbeat_stopped(monkeypatch):
    """Liveness on a real TCPStore: two ranks' waits meet; a rank that never beats is named."""
    import threading

    import torch.distributed as dist

    from robaudit import liveness
    from robaudit.errors import RuntimeFailure

    monkeypatch.setenv("ROBAUDIT_PEER_TIMEOUT", "1")
    monkeypatch.setattr(liveness, "_CHECK_SECONDS", 0.2)
    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    a, b = liveness.Liveness(dist.PrefixStore("a/", store), 0, 2), liveness.Liveness(dist.PrefixStore("a/", store), 1, 2)
    other = threading.Thread(target=b.wait_all, args=("test",))
    other.start()
    a.wait_all("test")
    other.join(10)
    assert not other.is_alive()
    b.stop()
    lonely = liveness.Liveness(dist.PrefixStore("b/", store), 0, 2)
    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"rank 1 stopped responding: no heartbeat for \d+ s"):
        lonely.wait_all("the gather")
    assert time.monotonic() - t0 < 10
    # a rank that arrived early and stopped while it waited (SIGSTOP): the last to arrive finds the
    # count complete but is held at the release and names it, instead of entering a collective with it
    early = liveness.Liveness(dist.PrefixStore("c/", store), 1, 2)
    early.stop()
    early.store.add("wait/1/arrived", 1)
    late = liveness.Liveness(dist.PrefixStore("c/", store), 0, 2)
    with pytest.raises(RuntimeFailure, match=r"rank 1 stopped responding: .*\(rank 0 combined the shards\)"):
        late.wait_all("rank 0 combined the shards")
    a.stop(), lonely.stop(), late.stop()
    monkeypatch.setenv("ROBAUDIT_PEER_TIMEOUT", "soon")
    from robaudit.errors import UsageError

    with pytest.raises(UsageError, match=r"\$ROBAUDIT_PEER_TIMEOUT must be a number of seconds"):
        liveness.peer_timeout()


def test_a_lost_peer_is_one_line_not_an_internal_error():
    import typer
    from torch.distributed import DistNetworkError

    from robaudit.cli._common import error_boundary

    with pytest.raises(typer.Exit) as exit_:
        with error_boundary(debug=False):
            raise DistNetworkError("Connection closed by peer [127.0.0.1]:29500\nframe #0 ...")
    assert exit_.value.exit_code == 4
