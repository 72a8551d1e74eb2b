"""train.speed.threads_follow_load: the thread tuner against a simulated CPU whose step time depends on
the thread count and on whether another process holds a core."""

from __future__ import annotations

import pytest

from btseg.training.threads import ThreadTuner

# seconds per training step on 2 cores: alone, 2 threads beat 1; beside a busy process 2 threads
# share one core and wait on each other at every barrier (the measured 2.5-3.3x), 1 thread does not
STEP_S = {(2, False): 1.0, (1, False): 1.7, (2, True): 3.0, (1, True): 1.75}


class SimulatedCpu:
    def __init__(self, busy_from: float = float("inf"), busy_until: float = float("inf")):
        self.now, self.threads, self.busy_from, self.busy_until = 0.0, 2, busy_from, busy_until
        self.trace: list[tuple[float, int]] = []

    def busy(self) -> bool:
        return self.busy_from <= self.now < self.busy_until

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        self.trace.append((self.now, threads))

    def train(self, tuner: ThreadTuner, seconds: float) -> int:
        """Training steps done in `seconds` of simulated time, the tuner told after each."""
        steps, end = 0, self.now + seconds
        while self.now < end:
            self.now += STEP_S[(self.threads, self.busy())]
            steps += 1
            tuner.step_done()
        return steps


def tuner_on(cpu: SimulatedCpu) -> ThreadTuner:
    return ThreadTuner(2, clock=lambda: cpu.now, set_threads=cpu.set_threads)


def test_alone_it_keeps_every_core_and_its_trials_cost_about_a_percent():
    cpu = SimulatedCpu()
    tuner = tuner_on(cpu)
    hour = cpu.train(tuner, 3600)
    assert cpu.threads == 2
    assert all(threads in (1, 2) for _, threads in cpu.trace)
    trials = sum(1 for _, threads in cpu.trace if threads == 1)
    assert 3 <= trials <= 25  # it keeps looking, ever less often (30 s, 60 s, ... up to 240 s apart)
    assert hour >= 0.98 * 3600 / STEP_S[(2, False)]


def test_beside_a_busy_process_it_drops_a_thread_and_takes_it_back_when_the_process_leaves():
    cpu = SimulatedCpu(busy_from=600, busy_until=1800)
    tuner = tuner_on(cpu)
    alone_steps = cpu.train(tuner, 600)
    assert cpu.threads == 2
    counts = tuner.take_counts()  # every step is counted once, at the count it ran with
    assert sum(counts.values()) == alone_steps and counts[2] > 0.9 * alone_steps
    busy_steps = cpu.train(tuner, 1200)
    counts = tuner.take_counts()
    assert sum(counts.values()) == busy_steps and counts[1] > 0.9 * busy_steps
    # switched to one thread within the longest wait between trials, and stayed there
    switched = next(t for t, threads in cpu.trace if t >= 600 and threads == 1)
    assert switched - 600 <= 3 * tuner.window_s + 2 * STEP_S[(2, True)]  # at once, not at the next scheduled trial
    fixed_two = 1200 / STEP_S[(2, True)]
    assert busy_steps > 1.4 * fixed_two  # against a fixed 2 threads: 1.7x the steps at best
    assert cpu.threads == 1
    cpu.train(tuner, 600)
    back = next(t for t, threads in cpu.trace if t >= 1800 and threads == 2)
    assert back - 1800 <= tuner.longest_wait_s + 2 * tuner.window_s and cpu.threads == 2


def test_a_pause_leaves_time_outside_training_steps_out_of_the_windows():
    """Validation between epochs is not counted as a slow step of whatever thread count is on trial."""
    cpu = SimulatedCpu()
    tuner = tuner_on(cpu)
    cpu.train(tuner, 29)
    for _ in range(40):  # one trial at 1 thread, each window interrupted by a long "validation"
        tuner.pause()
        cpu.now += 60
        cpu.train(tuner, 6)
    assert cpu.threads == 2


def test_one_core_means_nothing_to_tune():
    calls = []
    tuner = ThreadTuner(1, clock=iter(range(0, 10_000, 5)).__next__, set_threads=calls.append)
    for _ in range(1000):
        tuner.step_done()
    assert calls == []


@pytest.mark.parametrize("most", [3, 4])
def test_on_more_cores_it_steps_one_thread_at_a_time(most):
    now = [0.0]
    used = []
    tuner = ThreadTuner(most, clock=lambda: now[0], set_threads=used.append)
    for _ in range(2000):
        now[0] += 1.0  # the same speed at any count: every trial loses and is undone
        tuner.step_done()
    assert set(used) <= {most - 1, most} and tuner.threads == most
