"""generation.requested: make sure a worker will take the job.

The job is queued in PostgreSQL already (workers claim it from there, waking on NOTIFY); this
only scales the workers: on the embedded default it starts this process's warm local workers if
they are not running, on AWS it submits another Batch worker when the unfinished jobs outnumber
the workers, up to the limit. Applying the event twice asks for nothing more, so a redelivery is
harmless. `isolated`: one failing submission never makes a batch's other events run again.
"""

from events import GenerationRequested
from shared.runtime.consumer import Function
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


def handle(event: GenerationRequested, uow: UnitOfWork, ports: Ports) -> None:
    """Scale the workers for the queue this job joined."""
    ports.dispatcher.ensure_workers(uow.conn)


FUNCTION = Function("on_generation_requested", (GenerationRequested.type,), handle, isolated=True)
