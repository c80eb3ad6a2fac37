"""delivery.requested: deliver Production only, verified, or refuse with every reason.

The rule is `shared.delivery.delivery_problems`; on success the files are copied under
`deliveries/<id>/` with a manifest, on refusal nothing is copied. The delivery row moves from
`requested` exactly once, so the same event twice gives one outcome.
"""

from events import DeliveryRequested
from functions.lambda_entry import lambda_entrypoint
from shared import delivery
from shared.consumer import Function
from shared.errors import NotFound


def handle(event: DeliveryRequested, deps) -> None:
    """Check, then complete or reject, once."""
    with deps.uow() as uow:
        row = uow.conn.execute(
            """SELECT d.id, d.status, p.name AS project FROM deliveries d JOIN projects p ON p.id = d.project_id
               WHERE d.id = %s FOR UPDATE OF d""",
            [event.delivery_id],
        ).fetchone()
        if row is None:
            raise NotFound(f"delivery {event.delivery_id} does not exist")
        if row["status"] != "requested":
            return  # decided before
        reasons = delivery.delivery_problems(uow.conn, deps.s3, deps.bucket, row["project"], event.scene_ids)
        if reasons:
            delivery.reject_delivery(uow, row, reasons)
        else:
            delivery.complete_delivery(uow, deps.s3, deps.bucket, row, event.scene_ids)


FUNCTION = Function("on_delivery_requested", (DeliveryRequested.type,), handle)
lambda_handler = lambda_entrypoint(FUNCTION)
