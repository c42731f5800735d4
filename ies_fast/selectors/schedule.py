"""Which removed samples the forward-only scoring pass forwards each epoch.

* ``"every"`` (the paper's Appendix F): every removed sample, every ``score_every``
  epochs (``epoch % score_every == 0``); ``score_every=1`` is the paper's main rule.
* ``"backoff"``: each mastered sample has its own re-scoring interval. It starts at
  ``score_every`` epochs when the sample is mastered, doubles each time a
  re-score finds it still mastered, up to ``max_interval``, and starts over when
  the sample comes back (is not mastered). Samples whose loss has stayed still the
  longest are forwarded least often; a sample whose loss moves is seen again at
  most ``max_interval`` epochs later.

Either way a sample left unscored keeps its decision and its history (the
selector's rule for unobserved samples), so the decisions are exactly those of
:class:`ies_fast.ReferenceCriterion` fed only the losses the schedule lets through.
State (``"backoff"``): ``interval`` int16 and ``next_due`` int32 per sample
(6 bytes per sample), all on the selector's device; no host sync.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..checks import MAX_EPOCH, check_choice, check_int, integer

POLICIES = ("every", "backoff")
#: largest ``max_interval`` (fits int16 after doubling)
MAX_INTERVAL = 1 << 14


class ScoringSchedule:
    """The scoring policy of one selector (see the module docstring)."""

    def __init__(self, num_samples: int, policy: str = "every", *, score_every: int = 1,
                 max_interval: int = 8, device=None):
        check_choice("score_policy", policy, POLICIES)
        check_int("score_max_interval", max_interval, min=1, max=MAX_INTERVAL)
        if policy == "backoff" and max_interval < score_every:
            raise ValueError(f"score_max_interval ({max_interval}) must be at least score_every ({score_every})")
        self.num_samples = num_samples
        self.policy = policy
        self.score_every = score_every
        self.max_interval = max_interval
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.interval: Optional[torch.Tensor] = None
        self.next_due: Optional[torch.Tensor] = None
        if policy == "backoff":
            self.interval = torch.full((num_samples,), score_every, dtype=torch.int16, device=device)
            self.next_due = torch.zeros(num_samples, dtype=torch.int32, device=device)

    # ---- what the selector asks --------------------------------------------------------
    def needs_scoring(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` has a scoring pass at all (``"backoff"``: always; the
        due set may be empty)."""
        return self.policy == "backoff" or epoch % self.score_every == 0

    def due_mask(self, epoch: int, removed: torch.Tensor) -> torch.Tensor:
        """bool ``[S]``: the removed samples to forward in epoch ``epoch``."""
        if self.policy == "every":
            return removed
        return removed & (self.next_due <= epoch)

    def update(self, closed_epoch: int, observed: torch.Tensor, was_mastered: torch.Tensor,
               mastered: torch.Tensor) -> None:
        """After the decision that closes ``closed_epoch``: ``observed`` samples had a loss
        recorded in it, ``was_mastered``/``mastered`` are the decisions before/after."""
        if self.policy == "every":
            return
        doubled = torch.clamp(self.interval * 2, max=self.max_interval).to(torch.int16)
        start = ~mastered | ~was_mastered  # came back, or newly mastered: the interval starts over
        self.interval.copy_(torch.where(start, torch.full_like(self.interval, self.score_every),
                                        torch.where(observed, doubled, self.interval)))
        due = self.interval.to(torch.int32) + closed_epoch
        self.next_due.copy_(torch.where(observed & mastered, due, self.next_due))

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"policy": self.policy, "max_interval": self.max_interval}
        if self.policy == "backoff":
            state.update(interval=self.interval.clone(), next_due=self.next_due.clone())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`: checked whole first, then applied."""
        self.apply_state(self.check_state(state))

    def check_state(self, state) -> dict:
        """``state``, validated whole (nothing changes); ``ValueError`` naming the field
        unless it fits this schedule."""
        if not isinstance(state, dict):
            raise ValueError("state_dict['scoring_schedule'] must be a dict from ScoringSchedule.state_dict()")
        checked = [("policy", self.policy)]
        if self.policy == "backoff":
            checked.append(("max_interval", self.max_interval))
        elif "max_interval" in state:  # unused by "every", but a state holds a valid one
            integer(state, "max_interval", low=1, high=MAX_INTERVAL, where="state_dict['scoring_schedule']")
        for key, mine in checked:
            if state.get(key) != mine:
                raise ValueError(f"state_dict['scoring_schedule'][{key!r}] is {state.get(key)!r}, "
                                 f"this selector has {mine!r}")
        if self.policy == "backoff":
            for key, dtype in (("interval", torch.int16), ("next_due", torch.int32)):
                t = state.get(key)
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != (self.num_samples,) or t.dtype != dtype:
                    raise ValueError(f"state_dict['scoring_schedule'][{key!r}] must be a {dtype} tensor of "
                                     f"shape ({self.num_samples},)")
            interval = state["interval"]
            if bool(((interval < 1) | (interval > self.max_interval)).any()):
                raise ValueError(f"state_dict['scoring_schedule']['interval'] must lie in [1, {self.max_interval}]")
            high = MAX_EPOCH + self.max_interval  # due epochs are int32: a larger one would wrap
            if bool(((state["next_due"] < 0) | (state["next_due"] > high)).any()):
                raise ValueError(f"state_dict['scoring_schedule']['next_due'] must lie in [0, {high}]")
        return state

    def apply_state(self, state: dict) -> None:
        """Apply a state :meth:`check_state` returned (cannot fail)."""
        if self.policy == "backoff":
            self.interval.copy_(state["interval"].to(self.interval.device))
            self.next_due.copy_(state["next_due"].to(self.next_due.device))

    def to(self, device) -> None:
        if self.policy == "backoff":
            self.interval = self.interval.to(device)
            self.next_due = self.next_due.to(device)
