"""The saving drafting realised (`tierflow usage`): only a project that drafted below its final tier
has one to claim, and its final-tier jobs are priced at what they held."""

import pytest

from shared.domain.usage import device_seconds
from tests.integration.test_estimate import _scene

pytestmark = pytest.mark.integration


def _held(conn, project: str, tier: str, *held: float) -> None:
    """A scene of `project` at `tier` with one succeeded job per held time."""
    scene_id = _scene(conn, tier=tier, project=project, segments=((2, 2),) * len(held))
    jobs = conn.execute("SELECT j.id FROM generation_jobs j JOIN segments g ON g.id = j.segment_id "
                        "WHERE g.scene_id = %s ORDER BY g.position", [scene_id]).fetchall()
    for job, seconds in zip(jobs, held):
        conn.execute("UPDATE generation_jobs SET held_seconds = %s, load_seconds = 0 WHERE id = %s",
                     [seconds, job["id"]])


def test_a_project_that_only_drafted_has_no_saving_to_claim(conn):
    _held(conn, "drafts-only", "draft", 1.0, 1.0)
    _held(conn, "slow-drafts", "draft", 3.0, 3.0)  # the mean Draft job holds 2 s: 1 - 2/4 would be "50%"
    projects = device_seconds(conn)["projects"]
    for name in ("drafts-only", "slow-drafts"):
        assert projects[name]["final_tier"] == "draft" and projects[name]["saving"] is None
        assert projects[name]["saving_reason"] == ("every job was at its final tier draft: nothing was drafted "
                                                   "below it, so there is no saving to claim")


def test_final_tier_jobs_are_priced_at_what_they_held(conn):
    _held(conn, "mixed", "draft", 1.0, 1.0)
    _held(conn, "mixed", "production", 10.0)
    _held(conn, "big", "production", 30.0)  # the mean Production job holds 20 s
    projects = device_seconds(conn)["projects"]
    # Spent 12; the two Drafts at Production would have held 2 × 20, the Production job its own 10.
    assert projects["mixed"] == {"final_tier": "production", "held_seconds": 12.0, "at_final_tier_seconds": 50.0,
                                 "saving": 0.76, "saving_reason": None}
    assert projects["big"]["saving"] is None and "nothing was drafted" in projects["big"]["saving_reason"]
