"""Tierflow's entrypoints: the event handlers (`handlers`), the CLI (`cli`), the HTTP API and web UI
(`http`), the GPU worker (`worker`) and the AWS Lambda handlers (`lambda_entry`)."""
