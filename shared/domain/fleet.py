"""The worker fleet's register: every `tierflow worker serve` process writes what it is doing
(state, current jobs, cached models, jobs done, busy and idle seconds) when it starts, at every
heartbeat and when it stops; `tierflow workers list`, `GET /api/workers` and `tierflow usage`
read it. A worker that stopped writing (killed, hung, cut off) shows as `lost`."""

import psycopg

from shared.errors import NotFound

STATES = ("idle", "busy", "stopping", "stopped")
# Rows of workers gone longer than this are deleted when a worker starts: the register stays small.
FORGET_AFTER = "7 days"


def register_worker(conn: psycopg.Connection, worker_id: str, *, host: str, pid: int, device: str,
                    concurrency: int, models: list[str]) -> None:
    conn.execute(
        "DELETE FROM workers WHERE COALESCE(stopped_at, heard_at) < now() - %s::interval", [FORGET_AFTER])
    conn.execute(
        """INSERT INTO workers (id, host, pid, device, concurrency, models) VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, device = EXCLUDED.device,
               concurrency = EXCLUDED.concurrency, models = EXCLUDED.models, cached_models = '{}', state = 'idle',
               job_ids = '{}', jobs_done = 0, busy_seconds = 0, idle_seconds = 0, started_at = now(),
               heard_at = now(), stopped_at = NULL""",
        [worker_id, host, pid, device, concurrency, models])


def record_worker(conn: psycopg.Connection, worker_id: str, *, state: str, job_ids: list[int],
                  cached_models: list[str], jobs_done: int, busy_seconds: float, idle_seconds: float) -> None:
    """The worker's heartbeat (and, with state `stopped`, its last word)."""
    conn.execute(
        """UPDATE workers SET state = %s, job_ids = %s, cached_models = %s, jobs_done = %s, busy_seconds = %s,
                  idle_seconds = %s, heard_at = now(),
                  stopped_at = CASE WHEN %s = 'stopped' THEN now() END
           WHERE id = %s""",
        [state, job_ids, cached_models, jobs_done, busy_seconds, idle_seconds, state, worker_id])


def list_workers(conn: psycopg.Connection, *, silent_after_seconds: float, everyone: bool = False,
                 limit: int | None = None, after: str | None = None) -> list[dict]:
    """The workers (alive ones only unless `everyone`), newest first, in their documented JSON
    form. A worker not heard from for `silent_after_seconds` is `lost`. With `after` (a worker id,
    the cursor of the previous page), only those listed after it; at most `limit`."""
    if after is not None and conn.execute("SELECT 1 FROM workers WHERE id = %s", [after]).fetchone() is None:
        raise NotFound(f"worker {after!r} is not in the register (any more); list from the first page")
    rows = conn.execute(
        """SELECT * FROM (
               SELECT *, CASE WHEN state <> 'stopped' AND heard_at < now() - make_interval(secs => %(silent)s)
                              THEN 'lost' ELSE state END AS shown_state,
                      EXTRACT(EPOCH FROM COALESCE(stopped_at, heard_at) - started_at)::float8 AS alive_seconds
               FROM workers) w
           WHERE (%(everyone)s OR shown_state NOT IN ('stopped', 'lost'))
             -- after the cursor c in the order below: started before c, or with c and a greater id
             AND (%(after)s::text IS NULL OR (w.started_at, %(after)s::text) < (
                     SELECT c.started_at, w.id FROM workers c WHERE c.id = %(after)s::text))
           ORDER BY started_at DESC, id LIMIT %(limit)s""",
        {"silent": float(silent_after_seconds), "everyone": everyone, "after": after, "limit": limit}).fetchall()
    return [
        {"worker_id": r["id"], "host": r["host"], "pid": r["pid"], "device": r["device"],
         "concurrency": r["concurrency"], "models": r["models"], "state": r["shown_state"],
         "job_id": r["job_ids"][0] if r["job_ids"] else None, "job_ids": r["job_ids"],
         "cached_models": r["cached_models"], "jobs_done": r["jobs_done"],
         "busy_seconds": round(r["busy_seconds"], 3), "idle_seconds": round(r["idle_seconds"], 3),
         "alive_seconds": round(r["alive_seconds"], 3), "started_at": r["started_at"].isoformat(),
         "heard_at": r["heard_at"].isoformat()}
        for r in rows
    ]


def utilisation(conn: psycopg.Connection) -> dict:
    """Of all the slot-seconds the registered workers were alive, the share they spent on jobs."""
    row = conn.execute(
        """SELECT count(*) AS workers, COALESCE(sum(busy_seconds), 0)::float8 AS busy,
                  COALESCE(sum(concurrency * EXTRACT(EPOCH FROM COALESCE(stopped_at, heard_at) - started_at)), 0)::float8
                      AS alive
           FROM workers""").fetchone()
    return {"workers": row["workers"], "busy_seconds": round(row["busy"], 3),
            "alive_seconds": round(row["alive"], 3),
            "utilisation": round(row["busy"] / row["alive"], 4) if row["alive"] > 0 else None}
