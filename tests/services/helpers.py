"""A scheduler over any executor, with its callbacks recorded (the scheduler and Ray stage tests)."""
from __future__ import annotations

import time

from lingbot_rt.services.executor import Executor
from lingbot_rt.services.scheduler import Scheduler, SchedulerConfig


class Recorder:
    def __init__(self):
        self.outputs, self.errors, self.batch_sizes = [], [], []

    def output(self, block):
        self.outputs.append(block)

    def error(self, session_id, exc):
        self.errors.append((session_id, exc))

    def of(self, session_id):
        return [o for o in self.outputs if o.session_id == session_id]


def make_scheduler(executor: Executor, clock=time.monotonic, **config) -> tuple[Scheduler, Recorder]:
    """Unpaced unless `pace=True`: these tests call `step` back to back and expect a block from
    each running session each time (the pacing tests drive a fake clock)."""
    recorder = Recorder()
    scheduler = Scheduler(executor, SchedulerConfig(**{"pace": False, **config}), recorder.output, recorder.error,
                          on_step=recorder.batch_sizes.append, clock=clock)
    return scheduler, recorder


def wait_until(condition, timeout_s: float = 30.0) -> None:
    """Poll `condition` while the engine threads run; the assertions after it say what failed."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
