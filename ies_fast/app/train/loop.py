"""The reference training loop behind ``ies-fast train``: :func:`train` runs one
:class:`~ies_fast.app.train.config.TrainConfig` and returns its summary.

One epoch: train on the selector's kept samples (the loss records each kept
sample's loss on the way), score the removed ones in a forward-only pass, close
the epoch (``selector.step()``: the Δ^N test, merged over DDP ranks), evaluate,
log one row, checkpoint. The training step has no host synchronisation; the
phases are timed with one device sync each at their ends. Under torchrun the
same loop runs DDP: sharded kept batches, rank-0 logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import errno
import math
import functools
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from ... import IES, InfoBatch, RandomRemoval, cross_entropy
from ...io import distributed as dist_utils
from ...io.checkpoint import load_checkpoint, save_checkpoint
from ...io.run_folder import RunFolderError
from ...progress import progress as epoch_progress
from ...selectors.scoring import score
from ...selectors.sync import assert_selector_in_sync
from ...stopping import PatienceStopper, all_mastered
from .batches import make_batches
from .config import TrainConfig, resolve, resumed_config, uses_torchvision_models
from .interrupt import signals_deferred
from .logs import RunFiles, plot_history
from .out_checks import OutFolderError, check_out_folder
from .progress_lines import ProgressLines
from .resume_checks import ResumeStateError, check_resume_state, check_top
from .run_lock import RunFolderBusy, RunLock, RunLockError, stale_lock_line
from .samples import SampleRecord, write_samples
from .schedule import EpochSchedule

def _adapted_data(data, config: TrainConfig):
    """``data`` cut to ``--subset`` and with ``--label-noise`` flips (seeded by ``--seed``)."""
    from .datasets import label_noise, subset

    if config.subset is not None:
        data = subset(data, config.subset)
    return label_noise(data, config.label_noise, config.seed)


class RunError(RuntimeError):
    """A run cannot start or resume as asked (message fit for a one-line CLI error)."""


def selector_for_config(config: TrainConfig, num_samples: int, device: torch.device):
    """The selector ``--selector`` names; ``none`` is IES with δ=0 (same code path and
    costs, nothing removed), so the baseline's timing is comparable."""
    if config.selector in ("ies", "none"):
        delta = config.delta if config.selector == "ies" else 0.0
        min_kept = float(config.min_kept) if config.selector == "ies" else 0  # a fraction, as IES takes it too
        return IES(num_samples, delta=delta, order=config.order, window=config.window, device=device,
                   k=config.k, eligibility=config.eligibility, score_every=config.score_every, backend=config.backend, score_policy=config.score_policy,
                   score_max_interval=config.score_max_interval, min_kept=min_kept, seed=config.seed,
                   threshold=config.threshold)
    if config.selector == "infobatch":
        return InfoBatch(num_samples, config.epochs, prune_ratio=config.prune_ratio, device=device, seed=config.seed,
                         backend=config.backend)
    return RandomRemoval(num_samples, config.random_ratio, device=device, seed=config.seed, backend=config.backend)


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state(device: torch.device) -> dict:
    """The RNG states as plain data and tensors (a checkpoint holds nothing else)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    n = state["numpy"]
    torch.set_rng_state(state["torch"])
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # cuDNN autotuning pays off with IES too: only the last batch of an epoch takes a new shape
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _parse_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise RunError(f"--device must name a torch device (cpu, cuda, cuda:1, ...); got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"--device {text}: the training loop runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {text}: no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def _check_backend(requested: str, device: torch.device) -> None:
    from ...backend import resolve_backend

    try:
        resolve_backend(requested, device)
    except RuntimeError as exc:
        raise RunError(f"--backend {requested} cannot run on {device}: {exc}") from None


def _check_out(out: str) -> None:
    """Fail before any work if ``--out`` is a file, lies under one, or cannot be written."""
    try:
        check_out_folder(out)
    except OutFolderError as exc:
        raise RunError(str(exc)) from None
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise RunError(f"--out {out} is not writable: {exc.strerror or exc}") from None


def _state_nbytes(obj) -> int:
    """Bytes of the tensors in a nested state (what a checkpoint of it needs, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_nbytes(v) for v in obj)
    return 0


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, EDQUOT or EFBIG (``ulimit -f``: Python ignores SIGXFSZ, so the write fails),
    or torch.save's zip writer failing mid-file (how a full disk shows up there)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return isinstance(exc, RuntimeError) and ("inline_container" in str(exc) or "file write failed" in str(exc))


def _bar(total: int, enabled: bool, *, lines: bool = False, **kw):
    """A tqdm bar on stderr, drawn only on a terminal: redirected to a file or a
    pipe it would write escape codes, so there the epoch lines report, and with
    ``lines`` a plain progress line every 30 s (:mod:`.progress_lines`)."""
    from tqdm.auto import tqdm

    if enabled and lines and not _is_terminal(sys.stderr):
        return ProgressLines(total, **kw)
    enabled = enabled and _is_terminal(sys.stderr)
    return tqdm(total=total, disable=not enabled, dynamic_ncols=True, file=sys.stderr, **kw)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _lock_run_folder(config: TrainConfig):
    """The ``--out`` folder's :class:`~ies_fast.app.train.run_lock.RunLock`, taken before
    anything reads or writes there, on the rank that writes (launch rank 0; ``None``
    on the others, and where ``--out`` is unusable: the run's own checks report that).
    A folder another live run holds is a :class:`RunError` naming it."""
    out = config.out
    if int(os.environ.get("RANK", "0")) != 0 or not out or (os.path.exists(out) and not os.path.isdir(out)):
        return None
    if config.resume and not os.path.isdir(out):
        return None  # nothing to resume: reported without creating the folder
    try:
        lock = RunLock(out).acquire()
    except RunFolderBusy as exc:
        raise RunError(str(exc)) from None
    except (RunLockError, OSError) as exc:
        _check_out(out)  # a folder nobody may write: said as such
        raise RunError(str(exc) if isinstance(exc, RunLockError) else
                       f"--out {out}: cannot take the run lock: {exc.strerror or exc}") from None
    stale = stale_lock_line(lock)
    if stale:
        print(f"ies-fast: {stale}", file=sys.stderr)
    return lock


def _missing_folders(path: str) -> list:
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while path and not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_if_empty(folders: list) -> None:
    """Remove the folders a failed start created (deepest first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _holds_run_lock(init):
    """Wrap ``Trainer.__init__``: lock ``--out`` first, and let go of it if setting up fails."""
    @functools.wraps(init)
    def locked_init(self, config, **kwargs):
        if not config.resume:
            resolve(config)  # bad options: a ValueError before anything is created
        made = _missing_folders(config.out) if config.out else []
        try:
            self._run_lock = _lock_run_folder(config)
            init(self, config, **kwargs)
        except BaseException:
            self.release_run_lock()
            _remove_if_empty(made)  # nothing left behind by a run that never started
            raise
    return locked_init


class Trainer:
    """State of one run; :meth:`run` trains it to the end (or to an early stop)."""

    @_holds_run_lock
    def __init__(self, config: TrainConfig, *, given=None):
        """``given``: the options the user set (``None``: all); on ``--resume`` the
        others come from the checkpoint (see :func:`~ies_fast.app.train.config.resumed_config`)."""
        from .datasets import load_dataset
        from .models import build_model

        resume_state = self.read_resume_state(config)
        if resume_state is not None:
            try:
                config = resumed_config(resume_state["config"], config, given)
            except ValueError as exc:
                raise RunError(f"cannot resume {config.out}: {exc}") from None
        self.config = c = resolve(config)
        self.device = dist_utils.init_from_env(timeout_s=c.dist_timeout)
        if c.device and dist_utils.get_world_size() == 1:
            self.device = _parse_device(c.device)
        _check_backend(c.backend, self.device)
        self.world, self.rank = dist_utils.get_world_size(), dist_utils.get_rank()
        self.main = dist_utils.is_main_process()
        self.files = RunFiles(c.out)
        if self.main:
            _check_out(c.out)
            try:
                self.files.check()
            except RunFolderError as exc:
                raise RunError(str(exc)) from None
        _seed_everything(c.seed, c.deterministic)
        self.data = load_dataset(c.dataset, c.data_dir, seed=c.seed, synthetic_size=c.synthetic_size,
                                 synthetic_classes=c.synthetic_classes, image_size=c.image_size)
        self.data = _adapted_data(self.data, c)
        self.num_samples = self.data.num_train
        self.model = build_model(c.model, self.data.num_classes, self.data.input_shape,
                                 imagenet=uses_torchvision_models(c)).to(self.device)
        if self.data.kind != "vector":  # channels-last convolutions are faster on CPUs too
            self.model = self.model.to(memory_format=torch.channels_last)
        self.selector = selector_for_config(c, self.num_samples, self.device)
        self.samples = SampleRecord(self.data.train_y, self.data.num_classes, self.device, self.data.true_train_y)
        self.optimizer = make_optimizer(c, self.model)
        self.schedule = EpochSchedule(self.optimizer, c.lr_schedule, c.epochs, gamma=c.lr_gamma,
                                      milestones=c.lr_milestones)
        self.stopper = PatienceStopper("test_acc", mode="max", patience=c.patience) if c.early_stop == "patience" else None
        self.batches = make_batches(c, self.data, self.selector, self.device, self.world, self.rank)
        self.amp = (torch.autocast(self.device.type, dtype=torch.bfloat16) if c.amp else contextlib.nullcontext())
        self.history: list = []
        self.start_epoch = 0
        self.stopped = False
        if resume_state is not None:
            self._restore(resume_state)
        self.epoch_running = None  #: the epoch (from 0) being trained, for the interrupted line
        self.saved_epochs = self.start_epoch  #: epochs the checkpoint on disk holds
        net = torch.compile(self.model) if c.compile else self.model
        self.net = dist_utils.wrap_model(net, self.device)

    # ---- checkpoints ---------------------------------------------------------------------
    def release_run_lock(self) -> None:
        """Let another run use ``--out`` (:func:`train` and the CLI call this when the run ends)."""
        lock = getattr(self, "_run_lock", None)
        if lock is not None:
            lock.release()

    @staticmethod
    def read_resume_state(config: TrainConfig):
        """The checkpoint ``--resume`` continues (``None`` for a fresh run). A folder
        holding a checkpoint needs ``--resume``; ``--resume`` needs a checkpoint."""
        path = RunFiles(config.out).checkpoint
        found = os.path.exists(path) or os.path.exists(path + ".prev")
        if not config.resume:
            if found:
                raise RunError(f"{config.out} already holds a checkpoint: pass --resume to continue that run, "
                               f"or choose another --out")
            return None
        if not found:
            what = "does not exist" if not os.path.exists(config.out) else "holds no checkpoint.pt"
            raise RunError(f"--resume: {config.out} {what}; leave out --resume to start a new run there")
        state = load_checkpoint(path, fallback=True, map_location="cpu")
        try:
            return check_top(state)
        except ResumeStateError as exc:
            raise RunError(f"cannot resume {config.out}: {exc}") from None

    def _restore(self, state: dict) -> None:
        """Apply a checkpoint after checking all of it (:mod:`.resume_checks`)."""
        path = self.files.checkpoint
        try:
            check_resume_state(state, self)
        except ResumeStateError as exc:
            raise RunError(f"cannot resume {self.config.out}: {exc}") from None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.selector.load_state_dict(state["selector"])
        if self.stopper is not None and state.get("stopper") is not None:
            self.stopper.load_state_dict(state["stopper"])
        self.batches.sampler.load_state_dict(state["sampler"])
        if state.get("samples") is not None:
            self.samples.load_state_dict(state["samples"])
        _set_rng_state(state["rng"], self.device)
        self.history = state["history"]
        self.start_epoch = state["epoch"] + 1
        self.stopped = state["stopped"]
        if self.main:
            print(f"ies-fast: resumed {path} after epoch {self.start_epoch}", file=sys.stderr)

    def _checkpoint(self, epoch: int) -> None:
        state = {
            "config": self.config.to_dict(),
            "epoch": epoch,
            "stopped": self.stopped,
            "model": dist_utils.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "selector": self.selector.state_dict(),
            "stopper": self.stopper.state_dict() if self.stopper is not None else None,
            "sampler": self.batches.sampler.state_dict(),
            "samples": self.samples.state_dict(),
            "rng": _rng_state(self.device),
            "history": self.history,
            "world_size": self.world,
        }
        save_checkpoint(state, self.files.checkpoint)

    @contextlib.contextmanager
    def _disk_full_is_run_error(self, when: str):
        """Writes to ``--out`` ``when`` (e.g. "after epoch 3"); a full disk becomes a
        :class:`RunError` naming the folder and the bytes a checkpoint needs."""
        try:
            yield
        except RunFolderError as exc:  # a planted link or FIFO where a run file goes
            raise RunError(str(exc)) from None
        except (OSError, RuntimeError) as exc:
            if not _is_disk_full(exc):
                raise
            need = _state_nbytes([self.model.state_dict(), self.optimizer.state_dict(), self.selector.state_dict()])
            full = ("the file size limit (ulimit -f) is reached" if getattr(exc, "errno", None) == errno.EFBIG
                    else "no space left on the device")
            raise RunError(f"--out {self.config.out}: {full} {when}: a checkpoint needs about "
                           f"{need / 2**20:.1f} MiB ({need} bytes) free (the last complete checkpoint is kept)") from None

    def _save_epoch(self, epoch: int) -> None:
        """Checkpoint and logs after ``epoch`` (SIGINT/SIGTERM wait until they are written)."""
        with self._disk_full_is_run_error(f"after epoch {epoch + 1}"), signals_deferred():
            self._checkpoint(epoch)
            self.saved_epochs = epoch + 1
            self.files.write_rows(self.history)

    def _warmup_note(self, epochs_done: int) -> dict:
        """``{"warming_up": ...}`` while IES cannot remove anything yet: a sample
        needs ``selector.history_length`` losses (order + window with the paper's
        rule and k=1) before its first test."""
        need = getattr(self.selector, "history_length", 0) if self.config.selector == "ies" else 0
        if epochs_done >= need:
            return {}
        return {"warming_up": f"nothing removed before epoch {need + 1}"}

    # ---- one epoch ---------------------------------------------------------------------------
    def _anneal_epochs(self) -> int:
        return int(round(self.config.anneal * self.config.epochs))

    def _warn_if_kept_below_batch(self, epoch: int, kept: int) -> None:
        """Say in the log when fewer samples are kept than one (global) batch: the
        late collapse of docs/semantics.md ("collapse guard") starts there."""
        batch = self.config.batch_size * self.world
        if self.main and kept < batch and kept < self.num_samples:
            print(f"ies-fast: warning: epoch {epoch + 1}: {kept} of {self.num_samples} samples kept, fewer than one "
                  f"batch ({batch}); training on so few can make the model forget the removed ones "
                  f"(raise --min-kept, see docs/semantics.md, collapse guard)", file=sys.stderr)

    def _train_steps(self, epoch: int, batches, steps: int, bar) -> tuple:
        """The optimizer steps of one epoch over ``batches`` (``steps`` of them).
        Returns device accumulators ``(loss_sum, correct, seen)``: nothing here
        waits for the device."""
        sel, dev = self.selector, self.device
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        seen = 0
        for i, (x, y, index) in enumerate(batches):
            with self.amp:
                logits = self.net(x)
            loss = cross_entropy(logits, y, index, selector=sel, sample_weight=sel.loss_weights(index))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.set_progress(float(epoch_progress(epoch, i + 1, steps)))
            n = index.shape[0]
            seen += n
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == y).sum()
            bar.update(1)
        return loss_sum, correct, seen

    def _train_epoch(self, epoch: int, bar) -> dict:
        steps = len(self.batches)
        loss_sum, correct, seen = self._train_steps(epoch, self.batches.train(), steps, bar)
        if steps == 0:  # everything removed: the schedule still moves one epoch
            self.schedule.set_progress(epoch + 1)
        totals = dist_utils.all_reduce_sum(torch.stack([loss_sum, correct.double(), torch.tensor(
            float(seen), dtype=torch.float64, device=self.device)]))
        loss_total, correct_total, seen_total = totals.tolist()  # the epoch's one read
        return {"train_loss": loss_total / seen_total if seen_total else float("nan"),
                "train_acc": correct_total / seen_total if seen_total else float("nan")}

    def _evaluates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with a test pass: every ``--eval-every``
        epochs and after the last (its accuracy is the run's)."""
        c = self.config
        last = min(c.epochs, c.stop_after) if c.stop_after else c.epochs
        return (epoch + 1) % c.eval_every == 0 or epoch + 1 >= last

    def _evaluate(self) -> dict:
        model = dist_utils.unwrap_model(self.net)
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for x, y in self.batches.test():
                with self.amp:
                    logits = model(x)
                sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += y.shape[0]
        if self.batches.test_sharded:
            dist_utils.all_reduce_sum(sums)
        loss, correct, n = sums.tolist()
        return {"test_loss": loss / n if n else float("nan"), "test_acc": correct / n if n else float("nan")}

    def _epoch(self, epoch: int, progress: bool) -> dict:
        c, sel = self.config, self.selector
        if self._anneal_epochs() and epoch >= c.epochs - self._anneal_epochs() and sel.removal_enabled:
            sel.set_removal(False)  # annealing: the last epochs on the full data
        self.batches.set_epoch(epoch)
        kept = int(sel.kept_mask().sum())  # one read per epoch
        kept_by_class = self.samples.start_epoch(epoch, sel)
        self._warn_if_kept_below_batch(epoch, kept)
        lr = self.schedule.get_last_lr()[0]
        bar = _bar(len(self.batches), progress, lines=True, desc=f"epoch {epoch + 1}", leave=False, position=1)
        bar.set_postfix(kept=f"{kept / self.num_samples:.1%}", **self._warmup_note(epoch))
        t0, cpu0 = time.perf_counter(), time.process_time()
        row = self._train_epoch(epoch, bar)
        bar.close()
        _sync(self.device)
        t1 = time.perf_counter()
        autocast_dtype = torch.bfloat16 if c.amp else None
        score(sel, self.net, self.batches.score(), device=self.device, autocast_dtype=autocast_dtype)
        self.samples.observe_epoch(sel)
        sel.step()
        stats = sel.stats()
        _sync(self.device)
        t2, cpu2 = time.perf_counter(), time.process_time()
        row.update(self._evaluate() if self._evaluates(epoch) else {"test_loss": float("nan"), "test_acc": float("nan")})
        t3 = time.perf_counter()
        if self.world > 1:
            assert_selector_in_sync(sel)
        row = {
            "epoch": epoch + 1, "lr": lr, "num_samples": self.num_samples, **row,
            "kept": kept, "kept_fraction": kept / self.num_samples, "kept_fraction_by_class": kept_by_class.tolist(),
            "mastered": stats.get("mastered", stats.get("removed", 0)),
            "reincluded": stats.get("reincluded", 0), "scored": stats["scored_total"],
            "backward_samples": sum(r["kept"] for r in self.history) + kept,
            "backward_saved": stats["backward_saved"], "backward_saved_fraction": stats["backward_saved_fraction"],
            "removal_enabled": bool(stats["removal_enabled"]),
            "time_train_s": t1 - t0, "time_score_s": t2 - t1, "time_eval_s": t3 - t2, "time_epoch_s": t3 - t0,
            # CPU seconds of the whole process in the epoch: unlike wall time, not inflated by other
            # programs on a shared machine (includes loader threads; GPU time does not show)
            "time_cpu_s": time.process_time() - cpu0,
            "time_cpu_train_s": cpu2 - cpu0,  # training + scoring + the selector's step: no test pass
        }
        row.update(self._read_counts(epoch))
        return row

    def _read_counts(self, epoch: int) -> dict:
        """An image folder's files opened / bytes read by this epoch's training and
        scoring passes (summed over ranks), and the bad files skipped."""
        take = getattr(self.batches, "read_counts", None)
        counts = take() if take is not None else None
        if counts is None:
            return {}
        first = counts.pop("first_skipped", None)
        total = dist_utils.all_reduce_sum(torch.tensor(list(counts.values()), dtype=torch.float64, device=self.device))
        counts = dict(zip(counts, (int(v) for v in total.tolist())))
        if counts["files_skipped"] and self.main:
            print(f"ies-fast: epoch {epoch + 1}: skipped {counts['files_skipped']} bad image file(s) "
                  f"(--on-bad-image skip), e.g. {first}", file=sys.stderr)
        return counts

    def _should_stop(self, row: dict) -> bool:
        if self.config.early_stop == "patience":
            return self.stopper.step({"test_acc": row["test_acc"]})
        if self.config.early_stop == "mastered":
            return all_mastered(self.selector)
        return False

    # ---- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        c = self.config
        if self.main:
            with self._disk_full_is_run_error("at the start"):
                self.files.write_json(self.files.config, c.to_dict())
        progress = c.progress and self.main
        epochs = _bar(c.epochs, progress, initial=self.start_epoch, desc="epochs", position=0)
        end = min(c.epochs, c.stop_after) if c.stop_after else c.epochs
        for epoch in range(self.start_epoch, end):
            if self.stopped:
                break
            self.epoch_running = epoch
            row = self._epoch(epoch, progress)
            self.history.append(row)
            self.stopped = self._should_stop(row)
            if self.main:
                self._save_epoch(epoch)
                epochs.set_postfix(test_acc=f"{row['test_acc']:.2%}", kept=f"{row['kept_fraction']:.1%}",
                                   saved=f"{row['backward_saved_fraction']:.1%}", **self._warmup_note(epoch + 1))
                if progress:  # on stderr with the bars: stdout carries the summary JSON only
                    epochs.write(_epoch_line(row, c.epochs, self._warmup_note(epoch + 1)), file=sys.stderr)
            epochs.update(1)
            dist_utils.barrier()  # no rank runs ahead of the checkpoint
        epochs.close()
        summary = self.summary()
        if self.main:
            with self._disk_full_is_run_error("at the end"):
                self.files.write_json(self.files.summary, summary)
                # the per-sample table once per run (its counters are in every checkpoint)
                write_samples(self.samples.columns(self.selector), c.out)
            if c.plot and self.history:
                try:
                    what = f"IES δ={c.delta:g}" if c.selector == "ies" else c.selector
                    with self._disk_full_is_run_error("writing the plot"):
                        plot_history(self.history, self.files.plot, title=f"{what} on {c.dataset} ({c.model})")
                except ImportError:  # matplotlib is optional
                    pass
        return summary

    def summary(self) -> dict:
        h = self.history
        last = h[-1] if h else {}
        return {
            "dataset": self.config.dataset, "model": self.config.model, "selector": self.config.selector,
            "epochs_run": len(h), "stopped_early": bool(self.stopped and len(h) < self.config.epochs),
            "test_acc": last.get("test_acc", float("nan")),
            "best_test_acc": max((r["test_acc"] for r in h if not math.isnan(r["test_acc"])), default=float("nan")),
            "eval_every": self.config.eval_every,
            "test_loss": last.get("test_loss", float("nan")),
            "backward_saved": last.get("backward_saved", 0),
            "backward_saved_fraction": last.get("backward_saved_fraction", 0.0),
            "scored_samples": last.get("scored", 0),
            "wall_time_s": sum(r["time_epoch_s"] for r in h),
            "train_time_s": sum(r["time_train_s"] for r in h),
            "score_time_s": sum(r["time_score_s"] for r in h),
            "eval_time_s": sum(r["time_eval_s"] for r in h),
            "cpu_time_s": sum(r.get("time_cpu_s", float("nan")) for r in h),
            "train_cpu_time_s": sum(r.get("time_cpu_train_s", float("nan")) for r in h),
            "world_size": self.world,
            "out": self.config.out,
            "history": h,
        }


def _epoch_line(row: dict, epochs: int, note: dict) -> str:
    test = "-" if math.isnan(row["test_acc"]) else f"{100 * row['test_acc']:.2f}%"
    return (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  test {test}  "
            f"kept {100 * row['kept_fraction']:.1f}%  saved {100 * row['backward_saved_fraction']:.1f}%  "
            f"train {_seconds(row['time_train_s'])} score {_seconds(row['time_score_s'])} "
            f"eval {_seconds(row['time_eval_s'])}"
            + "".join(f"  ({k.replace('_', ' ')}: {v})" for k, v in note.items()))


def _seconds(t: float) -> str:
    """A duration readable at any size: ``0.4ms``, ``12.3ms``, ``1.23s``, ``123.40s``."""
    return f"{1e3 * t:.1f}ms" if t < 0.99995 else f"{t:.2f}s"


def train(config: TrainConfig, *, given=None) -> dict:
    """Run ``config`` (resuming from ``config.out`` with ``config.resume``) and return
    the summary: ``test_acc``, ``backward_saved_fraction``, ``wall_time_s``, the
    per-epoch ``history`` and more (also written to ``OUT/summary.json``)."""
    trainer = Trainer(config, given=given)
    try:
        return trainer.run()
    finally:
        trainer.release_run_lock()
        dist_utils.cleanup()
