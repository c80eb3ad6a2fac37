"""GPU time: the device-seconds generation jobs spent, per project and tier (`tierflow usage`)."""

import psycopg


def device_seconds(conn: psycopg.Connection) -> dict:
    """Device-seconds of every finished render, per project and tier, with totals per tier,
    per project and overall (the documented JSON of `tierflow usage --json`)."""
    rows = conn.execute(
        """SELECT p.name AS project, t.name AS tier, count(j.id) AS jobs,
                  COALESCE(sum(j.device_seconds), 0) AS device_seconds
           FROM generation_jobs j JOIN segments g ON g.id = j.segment_id JOIN scenes s ON s.id = g.scene_id
           JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
           WHERE j.device_seconds IS NOT NULL
           GROUP BY p.name, t.name, t.sort_order ORDER BY p.name, t.sort_order""").fetchall()
    by_tier: dict[str, float] = {}
    by_project: dict[str, float] = {}
    for row in rows:
        by_tier[row["tier"]] = by_tier.get(row["tier"], 0) + row["device_seconds"]
        by_project[row["project"]] = by_project.get(row["project"], 0) + row["device_seconds"]
    return {"rows": [{**r, "device_seconds": round(r["device_seconds"], 3)} for r in rows],
            "by_tier": {k: round(v, 3) for k, v in by_tier.items()},
            "by_project": {k: round(v, 3) for k, v in by_project.items()},
            "total_device_seconds": round(sum(by_tier.values()), 3)}
