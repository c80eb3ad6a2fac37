"""What an event handler may use besides its unit of work: the settings, the media bucket and the
dispatcher. Nothing else reaches a handler, so what a handler can touch is in its signature."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from shared.config import Settings


@dataclass(frozen=True)
class Storage:
    """The media bucket: a boto3 S3 client and the bucket's name."""

    s3: Any
    bucket: str


class Ports:
    """Storage and the dispatcher are built on first use, so a handler that needs neither never
    starts the S3 server or a Batch client."""

    def __init__(self, settings: Settings, storage: Callable[[], Storage], dispatcher: Callable[[], Any]):
        self.settings = settings
        self._storage, self._dispatcher = storage, dispatcher

    @cached_property
    def storage(self) -> Storage:
        return self._storage()

    @cached_property
    def dispatcher(self):
        """Where generation jobs run: `submit(job document, delay seconds) -> external id`, `name`."""
        return self._dispatcher()
