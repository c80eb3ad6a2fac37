-- The W3C trace context (traceparent) a scene was submitted in and a job was queued in, so that
-- its approval, upscales and the worker's reports continue the same trace (events/tracing.py).
ALTER TABLE scenes ADD COLUMN traceparent TEXT;
ALTER TABLE generation_jobs ADD COLUMN traceparent TEXT;
