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


def make_scheduler(executor: Executor, **config) -> tuple[Scheduler, Recorder]:
    recorder = Recorder()
    scheduler = Scheduler(executor, SchedulerConfig(**config), recorder.output, recorder.error,
                          on_step=recorder.batch_sizes.append)
    return scheduler, recorder


def wait_until(condition, timeout_s: float = 30.0) -> None:
    """Poll `condition` while the engine threads run; the assertions after it say what failed."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
