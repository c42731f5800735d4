"""The SIGKILL test's driver: imports once, then for each trial forks a child that
trains the tiny GPT-2 run (``hf_tiny.SIGKILL_RUN``) into its own folder and is
killed with SIGKILL while writing its k-th checkpoint:

* ``external``: by this driver, a random 0-40 ms after the k-th ``checkpoint-*``
  folder appears (the child is polled every 0.5 ms);
* the others by the child itself, at a chosen point of that checkpoint's write:
  ``weights`` (model written, nothing else), ``selector`` (``ies_selector.pt``'s
  temporary file written, not yet renamed), ``state`` (before
  ``trainer_state.json``), ``state-half`` (half of ``trainer_state.json``
  written), ``rotate`` (the checkpoint whole, an older one half deleted).

    python hf_sigkill_driver.py ROOT SEED MODE:K [MODE:K ...]

Prints one JSON line per trial: ``{"folder", "mode", "k", "status"}`` (status -9:
killed)."""
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import torch  # noqa: E402

torch.set_num_threads(1)  # before any op: the forked children then run no thread pool

from transformers import Trainer, TrainerState  # noqa: E402

from hf_tiny import SIGKILL_RUN, make_trainer  # noqa: E402
from ies_fast.integrations.huggingface import IESTrainer  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(mode: str, k: int) -> None:
    """In the child: SIGKILL itself at ``mode``'s point of the k-th checkpoint."""
    armed = {"on": False, "saves": 0}
    save_checkpoint = IESTrainer._save_checkpoint

    def counting_save(self, model, trial):
        armed["saves"] += 1
        armed["on"] = armed["saves"] == k
        save_checkpoint(self, model, trial)

    IESTrainer._save_checkpoint = counting_save
    if mode == "weights":
        save_model = Trainer.save_model

        def save_then_die(self, *args, **kwargs):
            save_model(self, *args, **kwargs)
            if armed["on"]:
                die()
        Trainer.save_model = save_then_die
    elif mode == "selector":
        replace = os.replace

        def die_before_rename(src, dst, *args, **kwargs):
            if armed["on"] and str(dst).endswith("ies_selector.pt"):
                die()
            return replace(src, dst, *args, **kwargs)
        os.replace = die_before_rename  # this process only: it is the forked child
    elif mode in ("state", "state-half"):
        save_to_json = TrainerState.save_to_json

        def half_then_die(self, path):
            if armed["on"]:
                if mode == "state-half":
                    save_to_json(self, path)
                    with open(path, "r+", encoding="utf-8") as f:
                        f.truncate(os.path.getsize(path) // 2)
                die()
            save_to_json(self, path)
        TrainerState.save_to_json = half_then_die
    elif mode == "rotate":
        rmtree = shutil.rmtree

        def half_delete_then_die(path, *args, **kwargs):
            if armed["on"]:
                for name in sorted(os.listdir(path))[::2]:
                    os.unlink(os.path.join(path, name))
                die()
            return rmtree(path, *args, **kwargs)
        shutil.rmtree = half_delete_then_die
    elif mode != "external":
        raise SystemExit(f"unknown mode {mode!r}")


def trial(folder: Path, mode: str, k: int, rng: random.Random) -> int:
    pid = os.fork()
    if pid == 0:  # the child: train until killed
        try:
            arm(mode, k)
            make_trainer(folder, **SIGKILL_RUN).train()
        except BaseException:
            import traceback

            traceback.print_exc()
        os._exit(3)  # not killed: the test fails on status 3
    if mode == "external":
        step = k * SIGKILL_RUN["save_steps"]
        while not (folder / f"checkpoint-{step}").exists():
            if os.waitpid(pid, os.WNOHANG)[0]:
                return 3
            time.sleep(0.0005)
        time.sleep(rng.uniform(0.0, 0.04))
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


if __name__ == "__main__":
    root, rng = Path(sys.argv[1]), random.Random(int(sys.argv[2]))
    for i, spec in enumerate(sys.argv[3:]):
        mode, k = spec.split(":")
        folder = root / f"trial{i}"
        status = trial(folder, mode, int(k), rng)
        print(json.dumps({"folder": str(folder), "mode": mode, "k": int(k), "status": status}), flush=True)
