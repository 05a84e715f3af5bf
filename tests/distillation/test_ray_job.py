"""DMD as a Ray Train job: two CPU workers (gloo) on a local Ray, one start for the module.
Like the other Ray test modules, it starts its own Ray and shuts it down before the next
module's (pytest runs modules one after another)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lingbot_rt.distillation.config import DMDConfig
from lingbot_rt.distillation.job import DMDJob
from lingbot_rt.distillation.trainer import CHECKPOINT
from lingbot_rt.model.checkpoint import load_model

from .helpers import SCHEDULE, load_clips, save_tiny

ray = pytest.importorskip("ray", reason="the Ray Train job needs Ray: python -m pip install -e '.[ray]'")
pytest.importorskip("ray.train.torch", reason="the Ray Train job needs ray[train]")
from lingbot_rt.distillation.ray_job import run_ray_job  # noqa: E402 - needs ray

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        raise RuntimeError("Ray is already running in this process: the Ray tests each start their own")
    # the workers unpickle the job's load_data (tests.distillation.helpers): give them the repo
    ray.init(num_cpus=3, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def test_two_ray_train_workers_complete_and_write_a_checkpoint(cluster, tmp_path):
    student, teacher = save_tiny(tmp_path / "student", 2), save_tiny(tmp_path / "teacher", 1)
    config = DMDConfig(batch_size=1, steps=2, update_ratio=2, log_every=1, save_every=2, student=SCHEDULE)
    job = DMDJob(str(student), str(teacher), str(tmp_path / "dmd"), load_clips, config)
    result = run_ray_job(job, workers=2, storage_path=str(tmp_path / "ray"))
    assert result.error is None
    log = [json.loads(line) for line in (tmp_path / "dmd" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["critic_loss"] > 0 for r in log)
    assert (tmp_path / "dmd" / CHECKPOINT / "step_00000002" / ".metadata").is_file()
    assert load_model(tmp_path / "dmd" / "student").cfg == load_model(student).cfg
    assert '"world_size": 2' in (tmp_path / "dmd" / "train_config.json").read_text()
