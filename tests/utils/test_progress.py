"""Progress output: a tqdm bar on a terminal, a compact line every few seconds in a log."""

from __future__ import annotations

import io

from difftori.utils.progress import LineProgress, progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_output_is_a_few_lines_not_one_per_update():
    out, clock = io.StringIO(), _Clock()
    bar = LineProgress(1000, desc="difftori cartpole", unit="step", interval=10.0, file=out, clock=clock)
    for _ in range(1000):  # 50 s of updates, 20 per second
        clock.t += 0.05
        bar.update(1)
        bar.set_postfix(ret="12.5")
    bar.close()
    lines = out.getvalue().splitlines()
    assert 4 <= len(lines) <= 6, lines  # one per 10 s, plus the final state
    assert lines[-1].startswith("difftori cartpole: 1000/1000 step (100%)") and "ret=12.5" in lines[-1]
    assert "eta" in lines[0] and "\r" not in out.getvalue()


def test_progress_picks_the_line_printer_for_files_and_respects_disabled():
    out = io.StringIO()  # not a terminal
    bar = progress(10, desc="x", file=out)
    assert isinstance(bar, LineProgress)
    bar.close()
    assert out.getvalue() == ""  # nothing happened, nothing printed
    quiet = progress(10, enabled=False, file=out)
    quiet.update(10)
    quiet.close()
    assert out.getvalue() == ""
