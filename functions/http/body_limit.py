"""Request bodies over TIERFLOW_MAX_BODY_BYTES get 413 before they are read: an ASGI middleware
outside authentication, so a caller without a key cannot make the server buffer a large body
either. A declared Content-Length over the limit is refused at once; a body without one (chunked)
is read up to the limit here, refused when it passes it, and handed on otherwise."""

from functions.http.problems import problem_response


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)  # the server stops at the length it declared
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = problem_response(413, "Payload too large",
                                    f"request bodies are limited to {self.max_bytes} bytes (TIERFLOW_MAX_BODY_BYTES)",
                                    headers={"Connection": "close"})
        await response(scope, receive, send)
