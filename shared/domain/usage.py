"""GPU time per project and tier (`tierflow usage`): the seconds spent rendering, and the seconds
workers held their device for the jobs (loading, encoding, uploading and failed attempts
included), which is what a GPU costs."""

import psycopg


def device_seconds(conn: psycopg.Connection) -> dict:
    """Per project and tier: succeeded jobs, their render seconds (`device_seconds`, also
    `render_seconds`) and the held seconds of every attempt that reported them; totals per tier,
    per project and overall (the documented JSON of `tierflow usage --json`)."""
    rows = conn.execute(
        """SELECT p.name AS project, t.name AS tier, count(j.device_seconds) AS jobs,
                  COALESCE(sum(j.device_seconds), 0) AS device_seconds,
                  COALESCE(sum(j.held_seconds), 0) AS held_seconds
           FROM generation_jobs j JOIN segments g ON g.id = j.segment_id JOIN scenes s ON s.id = g.scene_id
           JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
           WHERE j.device_seconds IS NOT NULL OR j.held_seconds IS NOT NULL
           GROUP BY p.name, t.name, t.sort_order ORDER BY p.name, t.sort_order""").fetchall()
    by_tier: dict[str, float] = {}
    by_project: dict[str, float] = {}
    for row in rows:
        by_tier[row["tier"]] = by_tier.get(row["tier"], 0) + row["device_seconds"]
        by_project[row["project"]] = by_project.get(row["project"], 0) + row["device_seconds"]
    return {"rows": [{**r, "device_seconds": round(r["device_seconds"], 3),
                      "render_seconds": round(r["device_seconds"], 3), "held_seconds": round(r["held_seconds"], 3)}
                     for r in rows],
            "by_tier": {k: round(v, 3) for k, v in by_tier.items()},
            "by_project": {k: round(v, 3) for k, v in by_project.items()},
            "total_device_seconds": round(sum(by_tier.values()), 3),
            "total_held_seconds": round(sum(r["held_seconds"] for r in rows), 3)}
