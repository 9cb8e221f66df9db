"""Keras's progress bar (keras/src/utils/progbar.py format), with no dependencies.

The bar redraws in place (backspaces + carriage return) only where that renders: a terminal,
a Jupyter kernel or PyCharm. Anywhere else (a pipe, a log file) each update is a new line, so
those updates are throttled much harder to keep logs short. verbose=2 prints one line at the end.
"""
import math
import os
import sys
import time

_BOLD, _GREEN, _WHITE, _RESET = "\x1b[1m", "\x1b[32m", "\x1b[37m", "\x1b[0m"


def dynamic_display(stream=None):
    stream = stream or sys.stdout
    return (hasattr(stream, "isatty") and stream.isatty()) or "ipykernel" in sys.modules \
        or "PYCHARM_HOSTED" in os.environ


def format_value(value):
    value = float(value)
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


def format_step_time(seconds, unit_name="step"):
    if seconds >= 1 or seconds == 0:
        return f" {seconds:.0f}s/{unit_name}"
    if seconds >= 1e-3:
        return f" {seconds * 1e3:.0f}ms/{unit_name}"
    return f" {seconds * 1e6:.0f}us/{unit_name}"


def format_eta(seconds):
    seconds = int(seconds)      # whole seconds, as Keras's %d formats them
    if seconds > 3600:
        return f"{seconds // 3600:d}:{(seconds % 3600) // 60:02d}:{seconds % 60:02d}"
    if seconds > 60:
        return f"{seconds // 60:d}:{seconds % 60:02d}"
    return f"{seconds:d}s"


class Progbar:
    """target: total steps (None if unknown); values passed to update() are shown as given
    (fastnn's logs are already running averages).

    Args:
        target: The total number of steps, or `None` when unknown.
        width: Width of the bar in characters. Defaults to `20`.
        verbose: 1: a bar redrawn in place; 2: one line at the end. Defaults to `1`.
        interval: Minimum seconds between redraws. Defaults to `0.05`.
        unit_name: What a step is called in the display. Defaults to `"step"`.
        stream: The file written to; `None`: standard output.
    """

    def __init__(self, target, width=20, verbose=1, interval=0.05, unit_name="step",
                 stream=None):
        self.target, self.width, self.verbose = target, width, verbose
        self.unit_name = unit_name
        self.stream = stream or sys.stdout
        self.dynamic = dynamic_display(self.stream)
        # A new line per update only pays off when updates are rare.
        self.interval = interval if self.dynamic else max(interval, 10.0)
        self._values = {}
        self._start = time.perf_counter()
        # Piped output: the first line only after `interval`, so short epochs print one line.
        self._last_update = -math.inf if self.dynamic else self._start
        self._time_after_first_step = None
        self._prev_width = 0

    def _step_time(self, current, now):
        """Seconds per step, leaving out the first step (it carries the warm-up)."""
        if not current:
            return 0.0
        if self._time_after_first_step is not None and current > 1:
            per_step = (now - self._time_after_first_step) / (current - 1)
        else:
            per_step = (now - self._start) / current
        if current == 1:
            self._time_after_first_step = now
        return per_step

    def _metrics_text(self):
        return "".join(f" - {k}: {format_value(v)}" for k, v in self._values.items())

    def update(self, current, values=None, finalize=None):
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        for k, v in values or ():
            self._values[k] = v
        now = time.perf_counter()
        per_step = self._step_time(current, now)
        if self.verbose == 1:
            if now - self._last_update < self.interval and not finalize:
                return
            self._last_update = now
            self._write(self._bar_line(current, per_step, now, finalize), finalize)
        elif self.verbose == 2 and finalize:
            digits = int(math.log10(self.target)) + 1 if self.target else 1
            count = f"%{digits}d/%d" % (current, self.target or current)
            self.stream.write(f"{count} - {now - self._start:.0f}s -"
                              f"{format_step_time(per_step, self.unit_name)}"
                              f"{self._metrics_text()}\n")
            self.stream.flush()

    def _bar_line(self, current, per_step, now, finalize):
        """(text, printed width): the width leaves out the ANSI escape codes."""
        if self.target:
            digits = int(math.log10(self.target)) + 1
            count = f"%{digits}d/%d" % (current, self.target)
            done = int(self.width * current / self.target)
            bar = f"{_BOLD}{count}{_RESET} "
            if done > 0:
                bar += f"{_GREEN}{'━' * done}{_RESET}"
            bar += f"{_WHITE}{'━' * (self.width - done)}{_RESET}"
            plain = len(count) + 1 + self.width
        else:
            bar = f"{int(current):7d}/Unknown"
            plain = len(bar)
        if self.target and not finalize:
            clock = format_eta(per_step * (self.target - current))
        else:
            clock = f"{now - self._start:.0f}s"
        info = f" {_BOLD}{clock}{_RESET}{format_step_time(per_step, self.unit_name)}" \
            f"{self._metrics_text()}"
        plain += len(info) - len(_BOLD) - len(_RESET)
        return bar + info, plain

    def _write(self, line, finalize):
        text, width = line
        if self.dynamic:
            prefix = "\b" * self._prev_width + "\r"
            pad = " " * max(0, self._prev_width - width)
            self._prev_width = width
            self.stream.write(prefix + text + pad + ("\n" if finalize else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
