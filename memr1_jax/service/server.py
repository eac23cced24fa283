"""The memory service over HTTP: a FastAPI app in front of a `Batcher` (run by `python -m memr1_jax.serve`).

Routes (JSON in and out; every /v1 route needs the API key when one is set, as "Authorization: Bearer <key>" or
"X-API-Key: <key>"):

  POST   /v1/users/{user_id}/memories        {"messages": str | [str | {"role", "content", "name"?}], "timestamp"?}
                                             -> the operations applied (Memory.add)
  GET    /v1/users/{user_id}/memories        -> {"memories": [...]}
  DELETE /v1/users/{user_id}/memories        -> every memory deleted;  DELETE .../memories/{memory_id}: one
  POST   /v1/users/{user_id}/search          {"query", "k"?} -> {"results": [...]}
  POST   /v1/users/{user_id}/answer          {"question", "timestamp"?} -> {"answer", "memory_ids", ...}
  GET    /v1/users/{user_id}/history         -> {"history": [...]}
  GET    /v1/users/{user_id}/export          -> JSONL (application/x-ndjson)
  POST   /v1/users/{user_id}/import          JSONL body -> {"memory_ids": [...]}
  GET    /v1/stats, GET /healthz

A body over `max_body_bytes` is refused with 413 and one that is not UTF-8 with 400 before any route reads it; fields
that do not validate give 422 naming them, an unknown memory 404, a missing or wrong key 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import Annotated, Union

import fastapi
import pydantic
from fastapi import responses

from memr1_jax import errors
from memr1_jax.service import api
from memr1_jax.service.batching import Batcher
from memr1_jax.service.store import USER_ID_RE, StoreError

logger = logging.getLogger(__name__)

UserId = Annotated[str, fastapi.Path(pattern=f"^{USER_ID_RE.pattern}$", description="1-128 of [A-Za-z0-9_.@-]")]


class Message(pydantic.BaseModel):
  """One message of an add: who said it (name, else role) and what."""

  model_config = pydantic.ConfigDict(extra="forbid")
  role: str = pydantic.Field("user", min_length=1, max_length=api.MAX_NAME_CHARS)
  content: str = pydantic.Field(min_length=1, max_length=api.MAX_MESSAGE_CHARS)
  name: str | None = pydantic.Field(None, min_length=1, max_length=api.MAX_NAME_CHARS)


MessageItem = Union[Annotated[str, pydantic.Field(min_length=1, max_length=api.MAX_MESSAGE_CHARS)], Message]


class AddBody(pydantic.BaseModel):
  """POST /memories."""

  model_config = pydantic.ConfigDict(extra="forbid")
  messages: Union[Annotated[str, pydantic.Field(min_length=1, max_length=api.MAX_MESSAGE_CHARS)],
                  Annotated[list[MessageItem], pydantic.Field(min_length=1, max_length=api.MAX_MESSAGES)]]
  timestamp: str | None = pydantic.Field(None, max_length=100)


class SearchBody(pydantic.BaseModel):
  """POST /search."""

  model_config = pydantic.ConfigDict(extra="forbid")
  query: str = pydantic.Field(min_length=1, max_length=api.MAX_QUERY_CHARS)
  k: int = pydantic.Field(10, ge=1, le=api.MAX_K)


class AnswerBody(pydantic.BaseModel):
  """POST /answer."""

  model_config = pydantic.ConfigDict(extra="forbid")
  question: str = pydantic.Field(min_length=1, max_length=api.MAX_QUERY_CHARS)
  timestamp: str | None = pydantic.Field(None, max_length=100)


async def _send_error(send, status: int, detail: str) -> None:
  body = json.dumps({"detail": detail}).encode("utf-8")
  await send({"type": "http.response.start", "status": status,
              "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
  await send({"type": "http.response.body", "body": body})


class BodyGuard:
  """ASGI middleware: reads a request's whole body first, refusing one over `max_bytes` (413, by its Content-Length
  when given) or not UTF-8 (400), then hands it on."""

  def __init__(self, app, max_bytes: int):
    self.app, self.max_bytes = app, int(max_bytes)

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    too_big = f"request body over {self.max_bytes} bytes"
    length = dict(scope["headers"]).get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
      return await _send_error(send, 413, too_big)
    chunks, size, more = [], 0, True
    while more:
      message = await receive()
      if message["type"] == "http.disconnect":
        return None
      chunks.append(message.get("body", b""))
      size += len(chunks[-1])
      more = message.get("more_body", False)
      if size > self.max_bytes:
        return await _send_error(send, 413, too_big)
    body = b"".join(chunks)
    try:
      body.decode("utf-8")
    except UnicodeDecodeError as e:
      return await _send_error(send, 400, f"request body is not UTF-8 (invalid byte at offset {e.start})")
    replayed = False

    async def replay():
      nonlocal replayed
      if replayed:
        return await receive()
      replayed = True
      return {"type": "http.request", "body": body, "more_body": False}

    return await self.app(scope, replay, send)


def make_app(memory, *, api_key: str | None = None, max_body_bytes: int = 1 << 20, window_s: float = 0.005,
             max_batch: int = 64) -> fastapi.FastAPI:
  """The FastAPI app serving `memory` (a `service.api.Memory`) through a `Batcher(window_s, max_batch)`; `api_key`
  None or "": no key. On shutdown the queued calls finish and the banks are snapshotted (`Memory.close`)."""
  batcher: Batcher | None = None

  @contextlib.asynccontextmanager
  async def lifespan(_):
    nonlocal batcher
    batcher = Batcher(memory, window_s=window_s, max_batch=max_batch)
    yield
    batcher.close()
    memory.close()

  def check_key(authorization: Annotated[str | None, fastapi.Header()] = None,
                x_api_key: Annotated[str | None, fastapi.Header()] = None) -> None:
    if not api_key:
      return
    given = x_api_key or (authorization[7:] if authorization and authorization.startswith("Bearer ") else "")
    if not hmac.compare_digest(given.encode("utf-8"), api_key.encode("utf-8")):
      raise fastapi.HTTPException(401, "missing or wrong API key (Authorization: Bearer <key> or X-API-Key)",
                                  headers={"WWW-Authenticate": "Bearer"})

  app = fastapi.FastAPI(title="memr1_jax memory service", lifespan=lifespan)
  v1 = fastapi.APIRouter(prefix="/v1", dependencies=[fastapi.Depends(check_key)])

  async def call(kind: str, *args):
    return await asyncio.wrap_future(batcher.submit(kind, *args))

  @app.exception_handler(errors.Error)
  async def _known_errors(_, e: errors.Error):
    status = 404 if isinstance(e, api.MemoryNotFound) else 500 if isinstance(e, StoreError) else 400
    if status == 500:
      logger.error("store error: %s", e)
    return responses.JSONResponse({"detail": str(e)}, status_code=status)

  @app.get("/healthz")
  async def healthz():
    return {"ok": True}

  @v1.post("/users/{user_id}/memories")
  async def add(user_id: UserId, body: AddBody):
    messages = body.messages if isinstance(body.messages, str) else [
        m if isinstance(m, str) else m.model_dump(exclude_none=True) for m in body.messages]
    return await call("add", api.AddRequest.make(user_id, messages, body.timestamp))

  @v1.get("/users/{user_id}/memories")
  async def get_all(user_id: UserId):
    return {"memories": await call("get_all", user_id)}

  @v1.delete("/users/{user_id}/memories")
  async def delete_all(user_id: UserId):
    return await call("delete", user_id, None)

  @v1.delete("/users/{user_id}/memories/{memory_id}")
  async def delete(user_id: UserId, memory_id: Annotated[int, fastapi.Path(ge=0)]):
    return await call("delete", user_id, memory_id)

  @v1.post("/users/{user_id}/search")
  async def search(user_id: UserId, body: SearchBody):
    return {"results": await call("search", user_id, body.query, body.k)}

  @v1.post("/users/{user_id}/answer")
  async def answer(user_id: UserId, body: AnswerBody):
    return await call("answer", api.AnswerRequest.make(user_id, body.question, body.timestamp))

  @v1.get("/users/{user_id}/history")
  async def history(user_id: UserId):
    return {"history": await call("history", user_id)}

  @v1.get("/users/{user_id}/export")
  async def export(user_id: UserId):
    return responses.PlainTextResponse(await call("export", user_id), media_type="application/x-ndjson")

  @v1.post("/users/{user_id}/import")
  async def import_(user_id: UserId, request: fastapi.Request):
    return await call("import_", user_id, (await request.body()).decode("utf-8"))

  @v1.get("/stats")
  async def stats():
    return {**await call("stats"), "batches": batcher.batches}

  app.include_router(v1)
  app.add_middleware(BodyGuard, max_bytes=max_body_bytes)
  return app
