"""One progress line per stage on `cai run`'s console, from the stage's own progress bars.

The notebooks' work reports progress through tqdm (generation batches, pairs, TRL's training
steps) on the kernel's stderr. papermill hands each stderr chunk to a file-like object
(`stderr_file`); `StageProgress` is that object. It keeps only the newest tqdm frame and shows
it as one line — `stage 02 02_train: train steps 12/51 (24%), 1.44s/it, ETA 00:56` — rewritten in
place on a terminal, printed at most every `every_s` seconds otherwise (a log file or a
remote call's output gets a line every half minute, not hundreds). Every other stderr text
(warnings, banners) is dropped here: it stays in the executed notebook.
"""

from __future__ import annotations

import re
import sys
import time

# tqdm's default format: "desc:  45%|████▌     | 54/120 [00:30<00:37,  1.78it/s]"
_FRAME = re.compile(r"(?:(?P<desc>[^\r\n|]*?):\s*)?(?P<pct>\d+)%\|[^|\r\n]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                    r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+),\s*(?P<rate>[^\]\r\n]*)\]")


def last_frame(text: str) -> dict | None:
    """The newest complete tqdm frame in a chunk of stderr, as its fields."""
    found = None
    for m in _FRAME.finditer(text):
        found = m
    if found is None:
        return None
    d = found.groupdict()
    d["desc"] = (d["desc"] or "").strip()
    return d


def describe(frame: dict) -> str:
    what = frame["desc"] or "steps"
    rate = frame["rate"].strip().rstrip(",")
    eta = frame["eta"] if frame["eta"] not in ("?", "") else "?"
    return f"{what} {frame['n']}/{frame['total']} ({frame['pct']}%), {rate}, ETA {eta}"


class StageProgress:
    """A write-only text stream for papermill's `stderr_file`."""

    def __init__(self, label: str, *, out=None, every_s: float = 30.0, tty: bool | None = None):
        self.label = label
        self.out = out if out is not None else sys.stdout
        self.every_s = every_s
        self.tty = self.out.isatty() if tty is None and hasattr(self.out, "isatty") else bool(tty)
        self.last_shown: float | None = None  # the first frame is shown at once
        self.pending: str | None = None
        self.shown_any = False

    def write(self, text: str) -> int:
        frame = last_frame(text)
        if frame is not None:
            self.pending = f"  {self.label}: {describe(frame)}"
            now = time.monotonic()
            if self.tty or self.last_shown is None or now - self.last_shown >= self.every_s:
                self._show()
                self.last_shown = now
        return len(text)

    def _show(self) -> None:
        if self.pending is None:
            return
        if self.tty:
            self.out.write("\r\x1b[2K" + self.pending)
        else:
            self.out.write(self.pending + "\n")
        self.out.flush()
        self.shown_any = True
        self.pending = None

    def flush(self) -> None:
        pass  # lines are flushed as they are shown

    def close(self) -> None:
        """End the stage's line: a terminal gets its newline; a log its last frame, if unseen."""
        if not self.tty:
            self._show()
        elif self.shown_any or self.pending:
            self._show()
            self.out.write("\n")
            self.out.flush()
