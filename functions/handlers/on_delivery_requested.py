"""delivery.requested: deliver Production only, verified, or refuse with every reason.

The rule is `shared.domain.delivery.delivery_problems`; on success the files are copied under
`deliveries/<id>/` with a manifest and an ASC MHL hash list (`ascmhl/`), exactly as they were checked
(`deliver_checked`), on refusal
nothing is copied. The delivery row moves from
`requested` exactly once, so the same event twice gives one outcome.
"""

from events import DeliveryRequested
from shared.domain import delivery
from shared.runtime.consumer import Function
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


def handle(event: DeliveryRequested, uow: UnitOfWork, ports: Ports) -> None:
    """Check, then complete or reject, once."""
    from shared.media.video import probe_video  # decoding needs numpy and ffmpeg: only here

    requested = delivery.lock_requested(uow.conn, event.delivery_id)
    if requested is None:
        return  # decided before
    s3, bucket = ports.storage.s3, ports.storage.bucket
    checked: dict[str, delivery.Checked] = {}
    reasons = delivery.delivery_problems(uow.conn, s3, bucket, requested["project"], event.scene_ids, probe_video,
                                         checked)
    if reasons:
        uow.emit(delivery.reject_delivery(uow.conn, requested, reasons))
    else:
        uow.emit(delivery.deliver_checked(uow.conn, s3, bucket, requested, event.scene_ids, checked))


FUNCTION = Function("on_delivery_requested", (DeliveryRequested.type,), handle)
