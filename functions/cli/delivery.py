"""`tierflow deliver`: deliver Production scenes, or see why not."""

import json

from functions.cli.jobs import DEPLOYED
from functions.cli.parsing import add_command, positive_number
from shared.domain import delivery
from shared.runtime import drive


def cmd_deliver(deps, args) -> int:
    if args.check:
        from shared.media.video import probe_video

        # The same rule the delivery handler applies, without recording a delivery.
        with deps.connect() as conn:
            reasons = delivery.delivery_problems(conn, deps.s3, deps.bucket, args.project, args.scene_ids, probe_video)
        result = {"deliverable": not reasons, "reasons": [r.model_dump(mode="json") for r in reasons]}
        if args.json:
            print(json.dumps(result, indent=2))
        elif reasons:
            print(f"would be refused: {delivery.summary(reasons)}")
            for reason in reasons:
                print(f"  {reason.code} scene {reason.scene_id}: {reason.message}")
        else:
            print(f"scenes {', '.join(map(str, args.scene_ids))} can be delivered")
        return 1 if reasons else 0

    delivery_id = delivery.request_delivery(deps, args.project, args.scene_ids, requested_by="cli")
    try:
        drive.run_until(deps, DEPLOYED, lambda conn: drive.delivery_decided(conn, delivery_id), settle=False,
                        timeout=args.timeout)
    except drive.TimedOut:
        runs_here = "" if deps.settings.embedded_bus else " (is `tierflow consume` running?)"
        raise drive.TimedOut(f"delivery {delivery_id} was requested but not decided within {args.timeout:g} s"
                             f"{runs_here}; its outcome, later: GET /api/deliveries/{delivery_id}") from None
    with deps.connect() as conn:
        result = delivery.get_delivery(conn, delivery_id, deps.s3, deps.bucket)
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["status"] == "completed":
        print(f"delivery {delivery_id} completed: manifest s3://{deps.bucket}/{result['manifest_key']}")
        print(f"  manifest URL (valid 7 days): {result['manifest_url']}")
    else:
        print(f"delivery {delivery_id} rejected:")
        for reason in result["reasons"]:
            print(f"  {reason['code']} scene {reason['scene_id']}: {reason['message']}")
    return 0 if result["status"] == "completed" else 1


def register(commands) -> None:
    """Add `deliver` to the `tierflow` parser."""
    deliver = add_command(commands, "deliver", cmd_deliver,
                          "deliver scenes of a project: deliverable tier (Production) and verified files only")
    deliver.add_argument("--project", required=True, help="the project the scenes belong to")
    deliver.add_argument("scene_ids", nargs="+", type=int, metavar="SCENE_ID")
    deliver.add_argument("--check", action="store_true",
                         help="only show what would be refused and why; records nothing")
    deliver.add_argument("--timeout", type=positive_number, default=120.0, metavar="SECONDS",
                         help="give up waiting for the outcome after this long (default 120); the delivery stays")
