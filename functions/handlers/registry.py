"""Every deployed event handler, by consumer name: what `tierflow consume`, the embedded bus and
the AWS template run."""

from functions.handlers import (
    on_delivery_requested,
    on_event_webhooks,
    on_generation_requested,
    on_generation_result,
    on_scene_approved,
    on_upscale_requested,
)
from shared.runtime.consumer import Function

FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (on_scene_approved.FUNCTION, on_upscale_requested.FUNCTION, on_generation_requested.FUNCTION,
              on_generation_result.FUNCTION, on_delivery_requested.FUNCTION, on_event_webhooks.FUNCTION)
}
