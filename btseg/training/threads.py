"""Torch threads that follow a shared CPU (train.speed.threads_follow_load).

OpenMP threads meet at a barrier after every operation, so a training step runs at the pace of its
slowest thread: when another process takes one of two cores, two threads share the one core left
and wait on each other, and the step slows far more than the core's share (2.5-3.3x an epoch on
the project's 2-core CPU beside one busy process; nice does not help across login sessions, which
Linux's autogroup scheduling weighs equally). One thread fewer then runs faster than all of them.

ThreadTuner measures rather than guesses from the load: it times the training steps in windows of
a few seconds and now and then tries a neighbouring thread count for one window, keeping it only
when it runs faster by a margin. A trial that loses makes the next one wait twice as long (up to
`longest_wait_s`), so a machine left alone pays about 1% for the trials; a window 30% slower than
the last at the same count starts a trial at once (a process arriving slows two threads 8x). The thread count changes
the bits of the result (a convolution sums in another order), not its quality: runs that must be
bit-identical keep it off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


class ThreadTuner:
    """Call `step_done()` after every training step and `pause()` before other work (validation)."""

    def __init__(self, most: int, window_s: float = 4.0, wait_s: float = 30.0, longest_wait_s: float = 240.0,
                 margin: float = 0.1, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.most, self.window_s, self.base_wait_s, self.longest_wait_s = most, window_s, wait_s, longest_wait_s
        self.margin, self.clock, self.set_threads = margin, clock, set_threads
        self.threads, self.wait_s, self.direction = most, wait_s, -1
        self.rates: dict[int, float] = {}  # steps/s of the latest window at each thread count
        self.trial_from: int | None = None  # the count a trial window started from
        self.window_start: float | None = None
        self.steps = 0
        self.steps_by_threads: dict[int, int] = {}  # training steps run at each thread count, until taken
        self.next_trial = clock() + wait_s

    def take_counts(self) -> dict[int, int]:
        """The steps run at each thread count since the last call (an epoch's, for its log row)."""
        counts, self.steps_by_threads = dict(sorted(self.steps_by_threads.items())), {}
        return counts

    def pause(self) -> None:
        """Forget the unfinished window: time spent outside training steps is no step's."""
        self.window_start, self.steps = None, 0

    def step_done(self) -> None:
        now = self.clock()
        self.steps_by_threads[self.threads] = self.steps_by_threads.get(self.threads, 0) + 1
        if self.window_start is None:  # the first step after a pause only starts the clock
            self.window_start, self.steps = now, 0
            return
        self.steps += 1
        elapsed = now - self.window_start
        if elapsed < self.window_s or self.most == 1:
            return
        rate, before = self.steps / elapsed, self.rates.get(self.threads)
        self.rates[self.threads] = rate
        self.window_start, self.steps = now, 0
        if self.trial_from is not None:
            self._judge_trial(now)
        elif now >= self.next_trial or (before is not None and rate < before * (1 - 3 * self.margin)):
            self._start_trial()  # on time, or at once when the steps slowed by 30%: the machine changed

    def _start_trial(self) -> None:
        candidate = self.threads + self.direction
        if not 1 <= candidate <= self.most:
            self.direction = -self.direction
            candidate = self.threads + self.direction
        self.trial_from = self.threads
        self._use(candidate)

    def _judge_trial(self, now: float) -> None:
        before, tried = self.trial_from, self.threads
        self.trial_from = None
        if self.rates[tried] > self.rates[before] * (1 + self.margin):
            log.info("%d torch threads run %.0f%% faster than %d here (another process is using the CPU "
                     "or has left it): keeping %d", tried, 100 * (self.rates[tried] / self.rates[before] - 1),
                     before, tried)
            self.wait_s = self.base_wait_s  # the machine changed: look again soon
        else:
            self._use(before)
            self.direction = -self.direction
            self.wait_s = min(2 * self.wait_s, self.longest_wait_s)
        self.next_trial = now + self.wait_s

    def _use(self, threads: int) -> None:
        self.threads = threads
        self.set_threads(threads)
