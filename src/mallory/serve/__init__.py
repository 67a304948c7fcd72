"""Serve any System as an HTTP prediction API: the black-box target."""

from mallory.serve.server import Server, ServeSettings, check_host, serve, serve_forever

__all__ = ["ServeSettings", "Server", "check_host", "serve", "serve_forever"]
