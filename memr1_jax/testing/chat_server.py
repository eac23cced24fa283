"""A stub OpenAI-compatible `/chat/completions` endpoint on 127.0.0.1 for tests (judge, teacher, fact extractor).

`ChatServer(reply)` serves every POST with `reply(body, attempt)`: `body` is the request's JSON, `attempt` counts the
requests whose last message had this content (1 for the first). `reply` returns the reply text (str), an HTTP status
to fail with (int), or a raw response body (bytes, e.g. one that is not JSON). Every request is recorded as
(headers, body) in `requests`, in arrival order. Use it as a context manager:

  with ChatServer(lambda body, attempt: '{"label": "CORRECT"}') as server:
    ... server.url ...  # "http://127.0.0.1:<port>/v1"
"""

from __future__ import annotations

import collections
import http.server
import json
import threading
from collections.abc import Callable


def last_user_message(body: dict) -> str:
  """The content of the last message of a chat-completions request body."""
  return body["messages"][-1]["content"]


class ChatServer:
  """A threaded stub endpoint (see the module doc)."""

  def __init__(self, reply: Callable[[dict, int], str | int | bytes]):
    self.requests: list[tuple[dict, dict]] = []
    self.attempts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with lock:
          server.requests.append((dict(self.headers), body))
          server.attempts[last_user_message(body)] += 1
          attempt = server.attempts[last_user_message(body)]
        out = reply(body, attempt)
        if isinstance(out, int):
          self.send_response(out)
          self.send_header("Content-Length", "0")
          self.end_headers()
          return
        if isinstance(out, str):
          out = json.dumps({"choices": [{"message": {"role": "assistant", "content": out}}]}).encode("utf-8")
        try:
          self.send_response(200)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(out)))
          self.end_headers()
          self.wfile.write(out)
        except OSError:  # The client gave up waiting.
          pass

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.httpd.block_on_close = False
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self) -> ChatServer:
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()

  def user_messages(self, start: int = 0) -> list[str]:
    """The last message of each request from request `start` on."""
    return [last_user_message(body) for _, body in self.requests[start:]]
