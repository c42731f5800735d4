"""Progress for a run whose stderr is a file or a pipe: a plain line every
:data:`EVERY_S` seconds instead of a tqdm bar (which would write escape codes there),
so that a full-size epoch, minutes long on a CPU, is never silent."""
from __future__ import annotations

import sys
import time

#: seconds between two progress lines
EVERY_S = 30.0


class ProgressLines:
    """The part of tqdm's interface the training loop uses (``update``, ``set_postfix``,
    ``close``, ``write``), printing ``"epoch 3: 120/469 batches (26%), 31 s"`` at most
    every :data:`EVERY_S` seconds."""

    def __init__(self, total: int, desc: str = "", file=None, **_ignored):
        self.total, self.desc, self.n = total, desc, 0
        self.file = file if file is not None else sys.stderr
        self.start = self.last = time.monotonic()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= EVERY_S:
            self.last = now
            share = f" ({self.n / self.total:.0%})" if self.total else ""
            print(f"{self.desc}: {self.n}/{self.total} batches{share}, {now - self.start:.0f} s{self.postfix}",
                  file=self.file, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        pass

    @staticmethod
    def write(text: str, file=None) -> None:
        print(text, file=file if file is not None else sys.stderr, flush=True)
