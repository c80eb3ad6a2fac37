"""GPU time per project and tier (`tierflow usage`): the seconds spent rendering, and the seconds
workers held their device for the jobs (loading, encoding, uploading and failed attempts
included), which is what a GPU costs; per project the saving that drafting realised; and how
busy the worker fleet was."""

import psycopg

from shared.domain import fleet

# Per project: the held seconds every attempt cost, against what the same generated segments
# would have held had each been rendered at the project's final tier (the highest it reached).
# A job at the final tier is priced at what it held (it would have been rendered so anyway); a
# job below it at the mean held seconds of a succeeded job of that model on that kind of device
# at the final tier, as measured here. `below_final` counts the jobs below the final tier: none
# means nothing was drafted, so there is no saving to claim (pricing its own jobs at other
# projects' means would only say how its jobs compare with theirs, e.g. a "23%" saving).
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
    SELECT DISTINCT ON (project) project, tier, sort_order FROM jobs WHERE status = 'succeeded'
    ORDER BY project, sort_order DESC)
SELECT f.project, f.tier AS final_tier,
       COALESCE(sum(j.held_seconds), 0)::float8 AS held_seconds,
       count(*) FILTER (WHERE j.held_seconds IS NULL) AS unmeasured,
       sum(CASE WHEN j.tier = f.tier THEN j.held_seconds ELSE c.held END)
           FILTER (WHERE j.status = 'succeeded')::float8 AS at_final_tier_seconds,
       count(*) FILTER (WHERE j.status = 'succeeded' AND j.tier <> f.tier AND c.held IS NULL) AS unpriced,
       count(*) FILTER (WHERE j.sort_order < f.sort_order) AS below_final
FROM final f JOIN jobs j ON j.project = f.project
LEFT JOIN costs c ON c.tier = f.tier AND c.model = j.model AND c.device = j.device
GROUP BY f.project, f.tier ORDER BY f.project
"""


def _no_saving_reason(row: dict) -> str | None:
    """Why a project's saving is not given, or None when it is."""
    if row["below_final"] == 0:
        return (f"every job was at its final tier {row['final_tier']}: nothing was drafted below it, "
                "so there is no saving to claim")
    if row["unmeasured"]:
        return f"{row['unmeasured']} job(s) did not report their held time"
    if row["unpriced"] or not row["at_final_tier_seconds"]:
        return f"no job of its models was measured at {row['final_tier']} on the same kind of device"
    return None


def realised_saving(conn: psycopg.Connection) -> dict[str, dict]:
    """Per project: its final tier, the held seconds spent, what rendering its generated segments
    at the final tier would have held, and the saving `1 - spent / that`; None, with
    `saving_reason`, when the project rendered at its final tier only (nothing to claim), some
    job did not report its held time, or no job of its model was measured at the final tier."""
    projects = {}
    for row in conn.execute(SAVING_QUERY).fetchall():
        reason = _no_saving_reason(row)
        projects[row["project"]] = {
            "final_tier": row["final_tier"], "held_seconds": round(row["held_seconds"], 3),
            "at_final_tier_seconds": round(row["at_final_tier_seconds"] or 0, 3),
            "saving": round(1 - row["held_seconds"] / row["at_final_tier_seconds"], 4) if reason is None else None,
            "saving_reason": reason,
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
