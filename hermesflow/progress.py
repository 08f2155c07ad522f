"""Progress inside one long model call, shown on the caller's bar.

Evaluation runs each phase over all its items in one call (batching it otherwise would change the
sampled images), so a bar that counts phases would sit still for minutes. A caller that wants to see
inside a call opens `phase(label)`; the models' inner loops wrap their ranges in `track(steps, unit)`
(batches of questions, decoding steps, tokens), which advances that phase's bar as each is done and
passes straight through when no phase is open.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

_open: list[tqdm] = []


@contextmanager
def phase(label: str) -> Iterator[tqdm]:
    """A bar for the work of one phase (`label`), which `track` fills; gone when the phase ends."""
    bar = tqdm(desc=label, leave=False, dynamic_ncols=True)
    _open.append(bar)
    try:
        yield bar
    finally:
        _open.pop()
        bar.close()


def track(steps: range, unit: str) -> Iterable[int]:
    """`steps`, counted on the open phase's bar in `unit`s (if a phase is open)."""
    return _counted(steps, unit, _open[-1]) if _open else steps


def _counted(steps: range, unit: str, bar: tqdm) -> Iterator[int]:
    bar.unit = unit
    bar.reset(total=len(steps))
    for step in steps:
        yield step
        bar.update()
