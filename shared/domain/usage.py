"""GPU time per project and tier (`tierflow usage`): the seconds spent rendering, and the seconds
workers held their device for the jobs (loading, encoding, uploading and failed attempts
included), which is what a GPU costs; per project the saving that drafting realised; and how
busy the worker fleet was."""

import psycopg

from shared.domain import fleet

# Per project: the held seconds every attempt cost, against what the same generated segments
# would have held had each been rendered at the project's final tier (the highest it reached),
# priced at the mean held seconds of a succeeded job of that model on that kind of device at
# that tier, as measured here.
SAVING_QUERY = """
WITH jobs AS (
    SELECT p.name AS project, t.name AS tier, t.sort_order, g.model, split_part(j.device, ':', 1) AS device,
           j.status, j.held_seconds
    FROM generation_jobs j JOIN segments g ON g.id = j.segment_id JOIN scenes s ON s.id = g.scene_id
    JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
    WHERE j.status IN ('succeeded', 'failed')),
costs AS (
    SELECT tier, model, device, avg(held_seconds) AS held FROM jobs
    WHERE status = 'succeeded' AND held_seconds IS NOT NULL GROUP BY tier, model, device),
final AS (
    SELECT DISTINCT ON (project) project, tier FROM jobs WHERE status = 'succeeded' ORDER BY project, sort_order DESC)
SELECT f.project, f.tier AS final_tier,
       COALESCE(sum(j.held_seconds), 0)::float8 AS held_seconds,
       count(*) FILTER (WHERE j.held_seconds IS NULL) AS unmeasured,
       sum(c.held) FILTER (WHERE j.status = 'succeeded')::float8 AS at_final_tier_seconds,
       count(*) FILTER (WHERE j.status = 'succeeded' AND c.held IS NULL) AS unpriced
FROM final f JOIN jobs j ON j.project = f.project
LEFT JOIN costs c ON c.tier = f.tier AND c.model = j.model AND c.device = j.device
GROUP BY f.project, f.tier ORDER BY f.project
"""


def realised_saving(conn: psycopg.Connection) -> dict[str, dict]:
    """Per project: its final tier, the held seconds spent, what rendering its generated segments
    at the final tier would have held, and the saving `1 - spent / that` (None when some job did
    not report its held time or no job of its model was measured at the final tier)."""
    projects = {}
    for row in conn.execute(SAVING_QUERY).fetchall():
        priced = row["unmeasured"] == 0 and row["unpriced"] == 0 and row["at_final_tier_seconds"]
        projects[row["project"]] = {
            "final_tier": row["final_tier"], "held_seconds": round(row["held_seconds"], 3),
            "at_final_tier_seconds": round(row["at_final_tier_seconds"] or 0, 3),
            "saving": round(1 - row["held_seconds"] / row["at_final_tier_seconds"], 4) if priced else None,
        }
    return projects


def device_seconds(conn: psycopg.Connection, project: str | None = None) -> dict:
    """Per project and tier: succeeded jobs, their render seconds (`device_seconds`, also
    `render_seconds`) and the held seconds of every attempt that reported them; totals per tier,
    per project and overall; each project's realised saving; the fleet's utilisation (the
    documented JSON of `tierflow usage --json`). With `project`, the rows, totals and saving of
    that project only; the fleet's utilisation stays the whole fleet's (workers serve every project)."""
    rows = conn.execute(
        """SELECT p.name AS project, t.name AS tier, count(j.device_seconds) AS jobs,
                  COALESCE(sum(j.device_seconds), 0) AS device_seconds,
                  COALESCE(sum(j.held_seconds), 0) AS held_seconds
           FROM generation_jobs j JOIN segments g ON g.id = j.segment_id JOIN scenes s ON s.id = g.scene_id
           JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
           WHERE (j.device_seconds IS NOT NULL OR j.held_seconds IS NOT NULL)
             AND (%(project)s::text IS NULL OR p.name = %(project)s::text)
           GROUP BY p.name, t.name, t.sort_order ORDER BY p.name, t.sort_order""", {"project": project}).fetchall()
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
            "total_held_seconds": round(sum(r["held_seconds"] for r in rows), 3),
            "projects": {name: saving for name, saving in realised_saving(conn).items()
                         if project is None or name == project},
            "fleet": fleet.utilisation(conn)}
