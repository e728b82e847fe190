"""The engineer console: server-rendered pages over the collector's own API handlers.

``casefile-collector serve --web-address HOST:PORT`` serves it over HTTPS with the
collector's certificate (``collector.web.serve``), in the collector's event loop.
"""
