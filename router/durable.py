"""What makes a run survive a crash: trainer checkpoints at node boundaries, and a clean stop on SIGINT / SIGTERM.

The graph's own state (epoch, which prompt version each rewritten sample is on, decisions) is checkpointed by
LangGraph's SQLite checkpointer after every step, the newest two kept (`pruned`); this module keeps the tensors that
live outside the graph — LoRA weights, optimizer state, RNG state — in `checkpoints/trainer-<epoch>.pt`, written to a
temporary file and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nslora.core.atomic import open_atomic
from nslora.core.interrupt import Interrupted, install_signal_handlers, stop_requested  # noqa: F401  (the run's stop points)

KEEP = 2  # the graph may resume from the epoch before the newest trainer checkpoint, never earlier


def trainer_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / "checkpoints" / f"trainer-{epoch:04d}.pt"


def save_trainer(trainer, run_dir: Path, epoch: int) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {
        "epoch": epoch,
        "params": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": trainer.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "skipped_steps": trainer.skipped_steps,
        "micro_batch": trainer.micro_batch,
        "oom_halvings": trainer.oom_halvings,
    }
    path = trainer_path(run_dir, epoch)
    with open_atomic(path, "wb") as f:
        torch.save(state, f)
    for old in sorted(path.parent.glob("trainer-*.pt"))[:-KEEP]:
        old.unlink()


def load_trainer(trainer, run_dir: Path, epoch: int) -> None:
    path = trainer_path(run_dir, epoch)
    if not path.is_file():
        from nslora.core.errors import UserError

        raise UserError(f"{path} is missing, so {run_dir} cannot resume from epoch {epoch}; start the run again")
    state = torch.load(path, weights_only=False)
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    trainer.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    trainer.skipped_steps = state["skipped_steps"]
    trainer.micro_batch = state.get("micro_batch")
    trainer.oom_halvings = state.get("oom_halvings", 0)


def pruned(saver, keep: int = 2):
    """The SQLite checkpointer, keeping only the newest `keep` checkpoints of the run (and their pending writes):
    resume starts from the newest, so older ones only grew the file, by a checkpoint per graph step."""
    put = saver.put

    def put_and_prune(config, checkpoint, metadata, new_versions):
        out = put(config, checkpoint, metadata, new_versions)
        thread, ns = out["configurable"]["thread_id"], out["configurable"].get("checkpoint_ns", "")
        newest = ("SELECT checkpoint_id FROM checkpoints WHERE thread_id=? AND checkpoint_ns=? "
                  "ORDER BY checkpoint_id DESC LIMIT ?")
        with saver.cursor() as cur:
            for table in ("writes", "checkpoints"):
                cur.execute(f"DELETE FROM {table} WHERE thread_id=? AND checkpoint_ns=? AND checkpoint_id NOT IN ({newest})",
                            (thread, ns, thread, ns, keep))
        return out

    saver.put = put_and_prune
    return saver


def hold_folder(path: Path):
    """An exclusive lock on a run folder for this process's lifetime: a second `nslora run` / `resume` of the same
    folder (two experiments started on one out_dir, a resume while the run still goes) is refused instead of
    interleaving its writes. The lock file sits beside the folder, so an overwrite can delete the folder safely;
    the OS releases the lock when the process ends, however it ends."""
    import fcntl

    from nslora.core.errors import UserError

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.parent / f".{path.name}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"run folder {path} is in use by {owner}; wait for it to finish or stop it, then `nslora resume {path}`") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"nslora process {os.getpid()}")
    handle.flush()
    return handle
