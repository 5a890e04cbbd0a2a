"""Progress fits where it is shown: a bar on a terminal, one line per step in a log."""

from __future__ import annotations

import io
import re

from rmt_deploy.progress import LogLine, tqdm


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_one_line_per_step_when_it_ends():
    log = io.StringIO()
    seen = list(tqdm(range(7), desc="analyze", unit="layer", file=log))
    assert seen == list(range(7))
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"analyze: 7 layer in \d+\.\d s", lines[0])
    bar = tqdm(total=40, desc="finetune", unit="step", file=log)
    for _ in range(40):
        bar.update()
    bar.set_postfix(loss="0.123")
    bar.close()
    bar.close()  # a second close writes nothing
    assert re.fullmatch(
        r"finetune: 40 step in \d+\.\d s \(loss=0.123\)", log.getvalue().splitlines()[1]
    )
    assert len(log.getvalue().splitlines()) == 2 and "\r" not in log.getvalue()


def test_on_a_terminal_tqdm_draws_its_bar_and_disable_is_silent():
    term = Terminal()
    for _ in tqdm(range(3), desc="plots", file=term, mininterval=0):
        pass
    assert "\r" in term.getvalue() and "3/3" in term.getvalue()
    assert not isinstance(tqdm(range(3), file=term), LogLine)
    quiet = io.StringIO()
    assert list(tqdm(range(3), desc="x", disable=True, file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""
