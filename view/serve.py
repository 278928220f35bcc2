"""`vindex view --serve`: the same page over HTTP on 127.0.0.1 (never on other interfaces).

The page is built once and held in memory; GET / returns it, anything else is 404. Use it where
opening a local file is awkward (a remote machine reached through an SSH tunnel, a Space).

A request must name this machine in its Host header (127.0.0.1 or localhost, any port: an SSH
tunnel may forward another local port): a web page that rebinds its own domain's DNS to
127.0.0.1 (DNS rebinding) sends its own name and gets 421, so it cannot read the page.
"""
from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
LOCAL_NAMES = (HOST, "localhost")   # Host header names accepted (any port)
_HOST_HEADER = re.compile(r"^(?P<name>[^:\[\]]+)(:\d{1,5})?$")


def page_server(html: str, port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for `html` bound to 127.0.0.1:`port` (0 picks a free port; see .server_port)."""
    body = html.encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            host = self.headers.get("Host")
            if host is None:
                self.send_error(400, explain="a Host header is required")
                return
            if not local_host(host):   # the explanation goes in the (escaped) body, never the status line
                self.send_error(421, explain=f"vindex view answers only to {' or '.join(LOCAL_NAMES)}, "
                                             f"not {host!r} (DNS rebinding guard)")
                return
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


def local_host(host: str) -> bool:
    """Whether a Host header value (name[:port]) names this machine by one of LOCAL_NAMES."""
    m = _HOST_HEADER.match(host.strip())
    return bool(m) and m["name"].lower().rstrip(".") in LOCAL_NAMES


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
