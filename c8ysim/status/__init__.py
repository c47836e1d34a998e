"""The status surface: the page, its JSON and metrics, and `c8ysim status`.

- `server`: a non-blocking HTTP/1.0 server that runs a WSGI app inside the supervisor's loop;
- `app`: the Bottle app (the only bottle importer): routes, query parameters, auth;
- `view`: pure functions over the supervisor's view (power, health, formatting);
- `html`: the page and its device cards; `metrics`: Prometheus text;
- `cli`: `c8ysim status`, which reads the running agent's `/api/status`.

Nothing here touches a device, a buffer or the network beyond its own socket.
"""
