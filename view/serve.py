"""`vindex view --serve`: the same page over HTTP on 127.0.0.1 (never on other interfaces).

The page is built once and held in memory; GET / returns it, anything else is 404. Use it where
opening a local file is awkward (a remote machine reached through an SSH tunnel, a Space).
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"


def page_server(html: str, port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for `html` bound to 127.0.0.1:`port` (0 picks a free port; see .server_port)."""
    body = html.encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.split("?")[0] not in ("/", "/index.html", "/view.html"):
                self.send_error(404, "vindex view serves one page: /")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # quiet: one line per request is noise for a viewer
            pass

    try:
        return ThreadingHTTPServer((HOST, port), Handler)
    except OSError as e:
        raise OSError(f"cannot serve on {HOST}:{port}: {e.strerror or e} (choose another --port, or 0 for any)") from None


def serve(html: str, port: int = 8000, ready=None) -> None:
    """Serve `html` until interrupted (Ctrl-C). `ready(url)` is called once the socket listens."""
    server = page_server(html, port)
    url = f"http://{HOST}:{server.server_port}/"
    if ready:
        ready(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def serve_in_thread(html: str, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start serving in a daemon thread (tests, notebooks); stop with `server.shutdown()`."""
    server = page_server(html, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{HOST}:{server.server_port}/"
