"""Every event a webhook can take: queue it for the endpoints registered for its type (and
project), in the transaction that applies it (see shared.domain.webhooks). The POSTs happen
later, in the sender: a receiver that is slow or down never holds up this handler, and nothing is
lost meanwhile. A redelivered event queues nothing twice."""

from events import CloudEvent
from shared.domain import webhooks
from shared.runtime.consumer import Function
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


def handle(event: CloudEvent, uow: UnitOfWork, ports: Ports) -> None:
    webhooks.record(uow.conn, event)


FUNCTION = Function("on_event_webhooks", webhooks.NOTIFIABLE, handle, takes_envelope=True)
