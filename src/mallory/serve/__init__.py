"""Serve any System as an HTTP prediction API: the black-box target."""

from mallory.serve.server import Server, check_host, serve, serve_forever

__all__ = ["Server", "check_host", "serve", "serve_forever"]
