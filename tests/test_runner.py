"""runner: local workers pull units from one shared queue (each unit runs once, a worker that is
done early takes more); status picks the job that matters among the jobs sharing a queue."""

from __future__ import annotations

import hashlib
import json

from launcher.config.schema import LocalClusterConfig
from launcher.core import backends, dispatch, runner
from launcher.core.layout import Layout
from launcher.core.units import Unit, is_complete, run_units


def md5_units(tmp_path, sizes: list[int]) -> list[Unit]:
    """md5 units over files of the given sizes (a real kind, cheap to run)."""
    units = []
    for i, size in enumerate(sizes):
        path = tmp_path / "data" / f"f{i}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes([i % 256]) * size)
        args = {"path": str(path), "expected": hashlib.md5(path.read_bytes()).hexdigest(), "key": f"f{i}"}
        units.append(Unit(f"md5-f{i}", "md5", size, str(tmp_path / "units" / f"md5-f{i}.json"), args))
    return units


def test_local_jobs_share_one_queue_largest_first(tmp_path):
    units = md5_units(tmp_path, [10, 4000, 200, 3000, 50, 1000])
    cluster = backends.backend_of(LocalClusterConfig(workers=2, poll_s=0.05))
    groups = runner.job_groups(units, cluster)
    assert len(groups) == 2 and all(g == groups[0] for g in groups)
    assert [u.size for u in groups[0]] == [4000, 3000, 1000, 200, 50, 10]
    jobs = runner.submit_units(cluster, tmp_path / "logs", "test", units)
    errors = runner.follow("test", units, jobs, cluster)
    assert errors == {} and all(is_complete(u) for u in units)
    claims = sorted(p.name for p in (tmp_path / "logs" / "claims-test").iterdir())
    assert claims == sorted(u.id for u in units)  # every unit claimed exactly once (O_EXCL)
    ran_by = {json.loads((tmp_path / "units" / f"{u.id}.json").read_text())["job"] for u in units}
    assert ran_by <= {j.job_id for j in jobs}


def test_a_claimed_unit_is_left_to_its_job(tmp_path):
    units = md5_units(tmp_path, [5, 6, 7])
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / units[1].id).touch()  # another job of the submission took it
    results = run_units(units, str(claims))
    assert [r["unit"] for r in results] == [units[0].id, units[2].id]
    assert not is_complete(units[1])


def test_status_prefers_an_active_then_a_failed_job_of_a_shared_queue(tmp_path, monkeypatch):
    layout = Layout.of(tmp_path / "root", tmp_path / "root" / ".launcher")
    layout.ledger.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "executor": "local",
        "folder": "F",
        "jobs": [{"job_id": "1", "units": ["a", "b"]}, {"job_id": "2", "units": ["a", "b"]}],
    }
    layout.ledger.write_text(json.dumps(entry) + "\n")
    for states, expected in (({"1": "RUNNING", "2": "COMPLETED"}, "1"), ({"1": "COMPLETED", "2": "FAILED"}, "2")):
        monkeypatch.setattr(dispatch, "job_states", lambda ex, folder, ids, s=states: {i: s[i] for i in ids})
        picked = runner.latest_states(layout, ["a"])
        assert picked["a"][2] == expected and picked["a"][3] == states[expected]
