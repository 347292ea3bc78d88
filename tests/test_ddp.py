"""Multi-process training with DistributedDataParallel: the rules, the pieces (shares of a
batch, of the loss, BatchNorm over the global batch) and, with torchrun on CPU (gloo, 2
processes), the same results as one process, one run dir, and an exact resume after a SIGTERM.

Tolerance of 2 processes against 1 (deterministic mode, same global batch): the batches,
augmentation and mixup are bit-identical and first-step gradients agree to ~1e-6 relative; the
order of float reductions differs (gradient all-reduce, BatchNorm statistics summed in float64).
Over the run these 1e-7 weight differences can flip a ReLU / max-pool decision, which moves one
step's gradient of a conv layer by a few percent (measured: the same flip appears in one process
fed the 2-process weights), so after two epochs of SGD the weights agree to atol 1e-4 +
rtol 1e-3 (measured max 9e-5), losses to 1e-4 relative, accuracy exactly. (AdamW would also
amplify near-zero gradients whose sign flips: lr-sized steps apart.) A 2-process run resumed
from its last.pt matches the uninterrupted 2-process run exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose, make_npz, run_cli, tiny_overrides

from orchard_app import train
from orchard_app.config.validate import validate
from orchard_app.distributed.batchnorm import AllReduceBatchNorm, convert_all_reduce_batchnorm
from orchard_app.distributed.collective import SingleProcess
from orchard_app.distributed.group import shard_bounds
from orchard_app.distributed.model import check_batches
from orchard_app.distributed.rank import first_host, rendezvous
from orchard_app.errors import ConfigError
from orchard_app.run.assemble import assemble
from orchard_app.run.context import RunContext

TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}  # weights, 2 processes against 1


def torchrun_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


# ---------------------------------------------------------------- rules
def test_a_global_batch_too_small_for_the_processes_is_refused(tiny_npz, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError) as err:
        validate(compose(*tiny_overrides(tiny_npz, "hardware=ddp", "training.batch_size=3")))
    assert "training.batch_size=3" in str(err.value) and "4 processes" in str(err.value)
    no_sync = ("hardware=ddp", "hardware.sync_batchnorm=false", "training.batch_size=7")
    with pytest.raises(ConfigError, match="at least 2 sample"):
        validate(compose(*tiny_overrides(tiny_npz, *no_sync)))
    validate(compose(*tiny_overrides(tiny_npz, "hardware=ddp", "training.batch_size=4")))


def test_ddp_takes_one_device_per_process_and_nccl_needs_cuda(tiny_npz):
    with pytest.raises(ConfigError) as err:
        validate(compose(*tiny_overrides(tiny_npz, "hardware=ddp", "hardware.device=cuda:1")))
    assert "cuda:<LOCAL_RANK>" in str(err.value)
    with pytest.raises(ConfigError, match="NCCL needs CUDA"):
        validate(compose(*tiny_overrides(tiny_npz, "hardware=ddp", "hardware.device=cpu",
                                         "hardware.backend=nccl")))  # fmt: skip


def test_a_last_batch_too_small_to_share_is_refused_with_the_fix():
    check_batches(96, 15, 2, sync_batchnorm=True)  # last batch of 6: 3 each
    check_batches(97, 16, 8, sync_batchnorm=True)  # last batch of 1 is dropped
    with pytest.raises(ConfigError) as err:
        check_batches(100, 16, 8, sync_batchnorm=True)  # last batch of 4 for 8 processes
    assert "training.batch_size=16" in str(err.value) and "8 processes" in str(err.value)


def test_hardware_ddp_in_a_single_process_is_a_plain_run(tiny_npz, tmp_path):
    cfg = compose(*tiny_overrides(tiny_npz, "hardware=ddp", "hardware.device=cpu"))
    with RunContext.create(cfg, tmp_path) as ctx:
        assert not ctx.distributed and ctx.group.shard(10) is None
    train(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "provenance.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------- the pieces
def test_shares_cover_every_sample_once_and_differ_by_at_most_one():
    for world in range(1, 9):
        for n in range(0, 40):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_slurm_tasks_find_their_rendezvous():
    assert first_host("gpu[07-09,12],cpu1") == "gpu07" and first_host("node5,node6") == "node5"
    env = {"SLURM_STEP_NODELIST": "a-[3-4]", "SLURM_JOB_ID": "4242"}
    assert rendezvous(env) == {"MASTER_ADDR": "a-3", "MASTER_PORT": "24242"}
    assert rendezvous({"MASTER_ADDR": "h", "MASTER_PORT": "1"}) == {}


def test_a_share_of_a_global_batch_is_that_slice_of_the_whole_batch(tmp_path):
    npz = make_npz(tmp_path / "rgb.npz", channels=3)
    augment = ["dataset.augment.hflip=true", "dataset.augment.vflip=true",
               "dataset.augment.rotation=20", "dataset.augment.random_resized_crop=true",
               "dataset.augment.color_jitter=0.3"]  # fmt: skip
    cfg = compose(*tiny_overrides(npz, *augment))
    pipeline = assemble(cfg, RunContext.create(cfg, tmp_path)).pipeline
    idx = torch.randperm(96, generator=torch.Generator().manual_seed(1))[:15]
    whole, y = pipeline.train_batch(idx, torch.Generator().manual_seed(7))
    for part in (slice(0, 8), slice(8, 15)):
        x, y_part = pipeline.train_batch(idx, torch.Generator().manual_seed(7), part)
        assert torch.equal(x, whole[part]) and torch.equal(y_part, y[part])


class TwoProcesses(SingleProcess):
    world_size = 2


@pytest.mark.parametrize(
    "overrides",
    [("training.class_weighted_loss=true", "training.label_smoothing=0.1"),
     ("training.mixup_alpha=0.4", "training.class_weighted_loss=true"), ()],
    ids=["weighted-smoothed", "mixup", "plain"],
)  # fmt: skip
def test_shares_of_the_loss_average_to_the_whole_batch_loss(tmp_path, overrides):
    """Unequal shares (8 and 7 of 15) and class weights: the processes' losses, averaged as
    DDP averages their gradients, are the whole batch's mean loss."""
    npz = make_npz(tmp_path / "d.npz", counts=(90, 30, 30))
    engine = assemble(*_cfg_ctx(npz, tmp_path, *overrides)).engine
    idx = torch.arange(15) * 5
    torch.manual_seed(0)
    engine.gen.manual_seed(3)
    x, target, _ = engine._batch(idx)
    logits = torch.randn(15, 3)
    whole = engine._loss(logits, target, train=True)
    engine.group = TwoProcesses()
    denominator = engine.loss.denominator(idx)
    shares = [engine._loss(logits[p], target[p], True, denominator) for p in (slice(0, 8), slice(8, 15))]  # fmt: skip
    assert torch.allclose((shares[0] + shares[1]) / 2, whole, rtol=1e-6)


def _cfg_ctx(npz, tmp_path, *overrides):
    cfg = compose(*tiny_overrides(npz, *overrides))
    return cfg, RunContext.create(cfg, tmp_path)


def test_all_reduce_batchnorm_is_batchnorm_over_the_global_batch(tmp_path):
    """One process of a gloo group: the same outputs, gradients and running statistics as
    torch's BatchNorm (across processes: the torchrun tests below)."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        synced = convert_all_reduce_batchnorm(
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        )
        synced.load_state_dict(plain.state_dict())
        assert isinstance(synced[1], AllReduceBatchNorm)
        assert list(synced.state_dict()) == list(plain.state_dict())
        x = torch.randn(6, 3, 8, 8) * 3 + 1
        outs = []
        for model in (plain, synced):
            out = model(x)
            (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
            outs.append((out, model[0].weight.grad, model[1].weight.grad, model[1].running_var))
        for a, b in zip(*outs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        synced.eval()
        torch.testing.assert_close(plain.eval()(x), synced(x))
    finally:
        torch.distributed.destroy_process_group()


def _two_ranks(rank: int, store: str, out: str) -> None:
    """One of 2 processes (torch.multiprocessing): the group's answers, and a decision of
    rank 0's epoch callback reaching rank 1."""
    import torch.distributed as dist

    from orchard_app.distributed.group import ProcessGroup
    from orchard_app.distributed.rank import ProcessRank
    from orchard_app.errors import DistributedError, RunPruned

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    group = ProcessGroup(ProcessRank(rank, 2), torch.device("cpu"), "gloo")
    rows = torch.arange(7)[group.shard(7)]
    seen = {"any": group.any(rank == 1), "gathered": group.gather(rows, 7).tolist(),
            "sum": group.sum(rank + 0.5), "metrics": group.broadcast({"rank": rank})}  # fmt: skip

    def prune():
        raise RunPruned("median pruner", epoch=2)

    def fail():
        raise ValueError("tracking server gone")

    for name, fn in (("prune", prune), ("fail", fail)):
        try:
            group.on_main(fn)
        except (RunPruned, DistributedError, ValueError) as e:
            seen[name] = [type(e).__name__, str(e), getattr(e, "epoch", None)]
    group.close()
    Path(out, f"{rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_two_processes_agree_on_flags_rows_metrics_and_rank_0s_decisions(tmp_path):
    torch.multiprocessing.spawn(_two_ranks, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    zero, one = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    for seen in (zero, one):
        assert seen["any"] is True and seen["gathered"] == list(range(7)) and seen["sum"] == 2.0
        assert seen["metrics"] == {"rank": 0}
    assert zero["prune"] == ["RunPruned", "median pruner", 2]
    assert one["prune"] == ["RunPruned", "RunPruned: median pruner", 2]
    assert zero["fail"][0] == "ValueError" and one["fail"][0] == "DistributedError"
    assert "tracking server gone" in one["fail"][1]


# ---------------------------------------------------------------- torchrun, 2 processes on CPU
RECIPE = ["training.epochs=2", "training.batch_size=15", "hardware.deterministic=true", "optimizer=sgd",
          "hardware.num_threads=1", "model.dropout=0", "dataset.augment.hflip=true",
          "dataset.augment.rotation=10", "training.mixup_alpha=0.2"]  # fmt: skip
# 96 training samples in batches of 15: shares of 8 and 7, and a last batch of 6 (3 each);
# 31 validation and 33 test samples: shares of 15/16 and 16/17.
COUNTS = (96, 31, 33)

# A worker for torchrun: the app, with a step hook that sends SIGTERM to rank 1 only.
SIGTERM_WORKER = """
import os, signal
from orchard_app.engine import loop

AT, RANK = int(os.environ["TEST_SIGTERM_AT_STEP"]), int(os.environ["RANK"])
_init = loop.Engine.__init__

def _init_with_hook(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    calls = [0]
    def sigterm(engine):
        calls[0] += 1
        if calls[0] == AT and RANK == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    self.step_hooks.append(sigterm)

loop.Engine.__init__ = _init_with_hook
from orchard_app.__main__ import main
main()
"""


def torchrun(*args: str, cwd: Path, target: tuple[str, ...] = ("-m", "orchard_app"),
             env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:  # fmt: skip
    """2 processes started by torchrun; returns its result and each rank's stderr."""
    logs = cwd / f"torchrun-logs-{len(list(cwd.glob('torchrun-logs-*')))}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--log-dir", str(logs), "--redirects", "3", *target, *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=torchrun_env(**(env or {})), capture_output=True,
                          text=True, timeout=400, stdin=subprocess.DEVNULL)  # fmt: skip
    ranks = [
        "".join(p.read_text() for p in sorted(logs.glob(f"**/attempt_0/{r}/std*.log")))
        for r in (0, 1)
    ]
    return proc, ranks


def ddp_args(npz: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(npz, *RECIPE), "hardware=ddp", "hardware.device=cpu", *extra]


def weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / name, weights_only=True)["model"]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """An uninterrupted 2-process run, started as a user would (its own run dir)."""
    base = tmp_path_factory.mktemp("ddp")
    npz = make_npz(base / "d.npz", counts=COUNTS)
    env = {"ORCHARD_DATA_DIR": str(base / "data"), "ORCHARD_CACHE_DIR": str(base / "cache")}
    proc, ranks = torchrun(*ddp_args(npz), cwd=base, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n".join(r[-3000:] for r in ranks)
    return base, npz, ranks


@pytest.mark.slow
def test_two_processes_match_one_process_and_write_one_run_dir(two_process_run, tmp_path):
    base, npz, ranks = two_process_run
    runs = [p for p in (base / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # rank 1 used rank 0's directory
    two = runs[0]
    prov = json.loads((two / "provenance.json").read_text())
    assert (prov["world_size"], prov["launcher"], prov["backend"]) == (2, "torchrun", "gloo")
    assert "epoch 2/2" in ranks[0] and "epoch" not in ranks[1]  # rank 1: warnings only
    assert not any("Traceback" in r for r in ranks)

    one_args = [a for a in ddp_args(npz) if not a.startswith("hardware=")]
    one = tmp_path / "one"
    proc = run_cli(*one_args, f"hydra.run.dir={one}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = metrics(one), metrics(two)
    assert a["test"]["accuracy"] == b["test"]["accuracy"]
    for key in ("loss", "auc", "macro_f1"):
        assert b["test"][key] == pytest.approx(a["test"][key], rel=1e-4, abs=1e-6), key
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-4)
    # predictions cover exactly the test split, in order, once
    assert len(
        (two / "predictions_test.csv").read_text().strip().splitlines()
    ) == 1 + COUNTS[2]  # fmt: skip
    wa, wb = weights(one), weights(two)
    assert list(wa) == list(wb)  # the same state dict keys: a 1-process run can load it
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], **TOLERANCE, msg=key)


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_one_step_and_the_resume_is_exact(
    two_process_run, tmp_path
):
    base, npz, _ = two_process_run
    (straight,) = [p for p in (base / "outputs").glob("*/*") if p.is_dir()]
    worker = tmp_path / "sigterm_worker.py"
    worker.write_text(SIGTERM_WORKER)
    run = tmp_path / "run"
    # 7 steps per epoch: step 9 is step 2 of epoch 2
    proc, ranks = torchrun(*ddp_args(npz, f"hydra.run.dir={run}"), cwd=tmp_path,
                           target=(str(worker),), env={"TEST_SIGTERM_AT_STEP": "9"})  # fmt: skip
    assert proc.returncode != 0
    assert "stopped by SIGTERM at epoch 2, step 2/7" in ranks[0], ranks[0][-3000:]
    assert "torchrun --nproc_per_node=2 -m orchard_app" in ranks[0]  # the resume command
    assert "interrupted" not in ranks[1]  # rank 0 reports it
    assert not any("Traceback" in r for r in ranks), ranks
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert (state["epoch"], state["step"]) == (1, 2)
    assert json.loads((run / "provenance.json").read_text())["status"] == "interrupted"

    proc, ranks = torchrun(*ddp_args(npz, f"hydra.run.dir={run}", "training.resume=auto"),
                           cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, "\n".join(r[-3000:] for r in ranks)
    a, b = metrics(straight), metrics(run)
    assert b["resumed_from"].endswith("last.pt") and len(b["history"]) == 2
    assert a["test"] == b["test"] and a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]  # fmt: skip
    wa, wb = weights(straight), weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    prov = json.loads((run / "provenance.json").read_text())
    assert [t["outcome"] for t in prov["attempts"]] == ["interrupted", "completed"]
