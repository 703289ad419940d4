"""Data-parallel harden (torchrun's environment, gloo, 2 CPU processes): 2 processes × batch B train
the same weights as 1 process × batch 2B for the double-backward regularizers, and a run
interrupted on 2 processes resumes on 1 to the uninterrupted result.

Tolerance: the two runs add the same per-sample terms in a different order (each rank's mean, then
DDP's average of the ranks, vs one mean over the global batch), so their gradients differ by
float32 rounding, ~1e-7 relative; Adam's steps are lr-sized (lr = 1e-3 here) whatever the
gradient's size, so after a few steps rounding moves a weight by far less than 1e-5, while the
runs move the weights by ~lr per step (checked: > 1e-3) and a run with another batch lands
~1e-3 away (checked), so 1e-5 separates equal from different by two orders of magnitude.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from robaudit.errors import RobauditError, UsageError
from robaudit.harden import HardenInterrupted, harden
from robaudit.harden.checkpointing import ckpt_path_for
from robaudit.models import save_model

ATOL = 1e-5  # see the module docstring
RUN = dict(epochs=2, eval_n=8, device="cpu", seed=3, scan=False, lr=1e-3)
CURE = dict(method="cure", train_n=37, gamma=1.0)  # global batches of 16, 16, 5: shares 3 + 2 in the last
JACOBIAN = dict(method="jacobian", train_n=33, reg_weight=0.2)  # 16, 16, 1: rank 1's last share is empty
BN_RUN = dict(RUN, method="cure", train_n=16, epochs=1)  # one step: 2 × 8 vs 1 × 16
RANDOM = dict(method="jacobian", combine="pgd-at", pgd_steps=2, train_n=37)  # PGD's random starts, 2 epochs
STOP = (1, 1)  # the interrupted run stops after epoch 2's first step


def _free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class _StopAt:
    """on_step: Ctrl-C right after step ``at`` = (epoch, completed steps)."""

    def __init__(self, at):
        self.at = tuple(at)

    def __call__(self, epoch, step):
        if (epoch, step) == self.at:
            raise KeyboardInterrupt


def _break_rank_1(rank: int, how: str):
    """From the second step on, rank 1's CURE loss raises (how="raise") or is NaN (how="nan");
    returns the original loss, to put back."""
    from robaudit.harden.regularizers import Cure

    original = Cure.loss

    def loss(self, model, x, y, ctx):
        out = original(self, model, x, y, ctx)
        if rank == 1 and ctx.progress > 0:
            if how == "raise":
                raise RuntimeError("boom")
            out.loss = out.loss * float("nan")
        return out

    Cure.loss = loss
    return original


def _rank(rank: int, world: int, jobs: list[tuple[int, dict]], data: str, outcomes: str) -> None:
    """One torchrun-like process: the environment torchrun sets, then each job's harden(); what each
    job ended with goes to ``outcomes``-rank.json."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
    seen = {}
    for port, kwargs in jobs:
        os.environ["MASTER_PORT"] = str(port)
        kwargs = dict(kwargs)
        stop, fail = kwargs.pop("stop", False), kwargs.pop("fail", None)
        original = _break_rank_1(rank, fail) if fail else None
        try:
            result = harden(kwargs.pop("parent"), data, on_step=_StopAt(stop) if stop else None, **kwargs)
            seen[kwargs["out"]] = {"returned": result is not None}
        except HardenInterrupted as exc:
            seen[kwargs["out"]] = {"interrupted": True, "saved": exc.saved}
        except RobauditError as exc:
            seen[kwargs["out"]] = {
                "error": str(exc),
                "exit_code": exc.exit_code,
                "reported_elsewhere": getattr(exc, "reported_elsewhere", False),
            }
        finally:
            if original is not None:
                from robaudit.harden.regularizers import Cure

                Cure.loss = original
    Path(f"{outcomes}-{rank}.json").write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process runs (one spawn for all of them), the tiny parents (small-cnn; yu-convnet with
    BatchNorm) and the data."""
    from robaudit.models import build_architecture

    tmp = tmp_path_factory.mktemp("ddp")
    for name, arch, kwargs in (
        ("parent", "small-cnn", {"width": 2, "hidden": 8, "input_size": 8}),
        ("bn-parent", "yu-convnet", {"width": 2}),
    ):
        torch.manual_seed(0)
        net = build_architecture(arch, num_classes=4, in_channels=1, kwargs=kwargs, input_size=8)
        save_model(
            tmp / f"{name}.safetensors",
            net,
            arch=arch,
            arch_kwargs=kwargs,
            num_classes=4,
            input_shape=(1, 8, 8),
            class_names=[f"c{i}" for i in range(4)],
        )
    parent = tmp / "parent.safetensors"
    rng = np.random.default_rng(0)
    data = tmp / "tiny.npz"
    np.savez(
        data,
        x=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
        y=rng.integers(0, 4, 40),
        class_names=np.array([f"c{i}" for i in range(4)]),
    )
    jobs = [
        {**RUN, **CURE, "batch_size": 8, "out": str(tmp / "cure2.safetensors")},
        {**RUN, **JACOBIAN, "batch_size": 8, "out": str(tmp / "jac2.safetensors")},
        {**RUN, **CURE, "batch_size": 8, "out": str(tmp / "resumed.safetensors"), "stop": STOP},
        {**BN_RUN, "batch_size": 8, "out": str(tmp / "bn2.safetensors"), "parent": str(tmp / "bn-parent.safetensors")},
    ]
    jobs += [
        {**RUN, **RANDOM, "batch_size": 8, "out": str(tmp / "random.safetensors")},
        {**RUN, **RANDOM, "batch_size": 8, "out": str(tmp / "random-resumed.safetensors"), "stop": STOP},
        {**RUN, **RANDOM, "batch_size": 8, "out": str(tmp / "random-resumed.safetensors"), "resume": True},
    ]
    jobs += [
        {**RUN, **CURE, "batch_size": 8, "out": str(tmp / f"fail-{how}.safetensors"), "fail": how} for how in ("nan", "raise")
    ]
    jobs = [{"parent": str(parent), **job} for job in jobs]
    mp.spawn(_rank, args=(2, list(zip(_free_ports(len(jobs)), jobs)), str(data), str(tmp / "outcomes")), nprocs=2)
    return tmp, str(parent), str(data)


def _outcomes(tmp, out: str) -> list[dict]:
    """What harden() did on rank 0 and rank 1 for the job writing ``out``."""
    return [json.loads((tmp / f"outcomes-{r}.json").read_text())[str(tmp / out)] for r in (0, 1)]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("name,method", [("cure2", CURE), ("jac2", JACOBIAN)])
def test_two_processes_of_batch_b_equal_one_of_batch_2b(runs, name, method):
    tmp, parent, data = runs
    one = tmp / f"{name}-one.safetensors"
    result = harden(parent, data, one, batch_size=16, **RUN, **method)
    two = tmp / f"{name}.safetensors"
    assert not ckpt_path_for(two).exists()
    assert _outcomes(tmp, two.name) == [{"returned": True}, {"returned": False}]  # rank 0 alone returns the result
    diff = _max_diff(_weights(one), _weights(two))
    assert diff < ATOL, f"2 processes × 8 differ from 1 × 16 by {diff:.2e}"
    assert _max_diff(_weights(one), _weights(parent)) > 1e-3  # it trained
    other = tmp / f"{name}-b8.safetensors"  # another batch: far outside the tolerance
    harden(parent, data, other, batch_size=8, **RUN, **method)
    assert _max_diff(_weights(other), _weights(two)) > 100 * ATOL
    assert result.history[-1]["epoch"] == 2 and np.isfinite(result.history[-1]["penalty"])


def test_interrupted_on_two_processes_resumes_on_one(runs):
    tmp, parent, data = runs
    resumed = tmp / "resumed.safetensors"
    assert ckpt_path_for(resumed).exists() and not resumed.exists()
    assert [o["saved"] for o in _outcomes(tmp, resumed.name)] == [True, False]  # rank 0 alone writes the checkpoint
    with pytest.raises(UsageError, match="global batch"):  # 1 × 8 is not the 2 × 8 it was started with
        harden(parent, data, resumed, batch_size=8, resume=True, **RUN, **CURE)
    result = harden(parent, data, resumed, batch_size=16, resume=True, **RUN, **CURE)
    straight = tmp / "straight.safetensors"
    harden(parent, data, straight, batch_size=16, **RUN, **CURE)
    diff = _max_diff(_weights(straight), _weights(resumed))
    assert diff < ATOL, f"resumed on 1 process differs from the uninterrupted run by {diff:.2e}"
    assert [r["epoch"] for r in result.history] == [0, 1, 2]


def test_batchnorm_running_means_average_the_ranks(runs):
    """With BatchNorm each rank normalizes its share by its own statistics (so the weights and the
    deeper layers' inputs differ from one process's); after every step the running means are
    averaged over the ranks by sample count, which makes the first BatchNorm's, whose input does
    not depend on that normalization, the global batch's: after one step, one process's."""
    tmp, _, data = runs
    one = tmp / "bn1.safetensors"
    harden(str(tmp / "bn-parent.safetensors"), data, one, batch_size=16, **BN_RUN)
    a, b, parent = _weights(one), _weights(tmp / "bn2.safetensors"), _weights(tmp / "bn-parent.safetensors")
    first = "features.0.1.running_mean"  # yu-convnet: features.i = (conv, BatchNorm2d, ReLU)
    assert float((a[first] - b[first]).abs().max()) < ATOL
    assert float((a[first] - parent[first]).abs().max()) > 100 * ATOL  # it was updated
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith("num_batches_tracked"))


@pytest.mark.slow
def test_torchrun_cli_prints_and_writes_once(runs):
    """`torchrun --nproc_per_node=2 -m robaudit harden`: rank 0 alone prints the tables and writes
    --out and --json; a stale checkpoint is one error line from rank 0 and exit 2 on every rank."""
    import json
    import subprocess
    import sys

    tmp, parent, data = runs
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "robaudit",
        "harden",
        parent,
        "-d",
        data,
        "--train-n",
        "37",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--eval-n",
        "8",
        "--device",
        "cpu",
        "--out",
        "cli.safetensors",
        "--json",
        "cli.json",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("hardened model written to") == 1 and proc.stdout.count("before → after") == 1
    assert "2 processes × batch 8" in proc.stderr
    assert json.loads((tmp / "cli.json").read_text())["hyperparameters"]["batch_size"] == 16
    (tmp / "cli.safetensors.ckpt").write_bytes(b"stale")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "exists (an interrupted run)" in ours[0], proc.stderr[-3000:]
    assert proc.returncode != 0 and "exitcode: 2" in proc.stderr


def test_random_draws_resume_exactly_on_the_same_process_count(runs):
    """pgd-at's random starts come from per-rank streams reseeded every step, so a run interrupted
    and resumed on 2 processes gives the uninterrupted run's weights bit for bit (and it trains)."""
    tmp, parent, _ = runs
    a, b = _weights(tmp / "random.safetensors"), _weights(tmp / "random-resumed.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _max_diff(a, _weights(parent)) > 1e-3


@pytest.mark.parametrize(
    "how,message",
    [
        ("nan", "rank 1: the cure loss became nan at epoch 1, step 2; lower --lr or the regularization weight"),
        ("raise", "rank 1: internal error: RuntimeError: boom"),
    ],
)
def test_an_error_on_one_rank_stops_every_rank_with_rank_0_reporting(runs, how, message):
    """Rank 1's loss fails at its second step: every rank raises the same error and exit code, only
    rank 0's is to be printed, and nothing is written."""
    tmp, _, _ = runs
    out = f"fail-{how}.safetensors"
    assert _outcomes(tmp, out) == [{"error": message, "exit_code": 4, "reported_elsewhere": rank != 0} for rank in (0, 1)]
    assert not (tmp / out).exists() and not ckpt_path_for(tmp / out).exists()
