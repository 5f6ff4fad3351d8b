"""Command-line options of the server (the subset of ComfyUI's flags that matter, COMPAT §11)."""
from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass


class ArgsError(ValueError):
    """Options that parse but make no sense together (e.g. an open bind without a token)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="latentgraph server (ComfyUI-compatible API)")
    p.add_argument("--listen", nargs="?", const="0.0.0.0,::", default="127.0.0.1", metavar="IP[,IP]",
                   help="addresses to listen on (default 127.0.0.1; bare flag = all interfaces)")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--base-directory", default=None, help="base for models/, input/, output/, temp/, user/")
    p.add_argument("--input-directory", default=None)
    p.add_argument("--output-directory", default=None)
    p.add_argument("--temp-directory", default=None, help="parent of the temp/ directory")
    p.add_argument("--user-directory", default=None)
    p.add_argument("--extra-model-paths-config", action="append", nargs="+", default=[], metavar="PATH")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-classic", action="store_true", help="drop entries the last prompt did not use")
    cache.add_argument("--cache-lru", type=int, default=0, metavar="N", help="keep N output entries (LRU)")
    cache.add_argument("--cache-ram", nargs="?", type=float, const=4.0, default=None, metavar="GB",
                       help="keep everything, evict when free RAM drops below GB")
    cache.add_argument("--cache-none", action="store_true")
    p.add_argument("--preview-method", choices=["none", "auto", "latent2rgb", "taesd"], default="none")
    p.add_argument("--preview-size", type=int, default=512)
    p.add_argument("--max-upload-size", type=float, default=100, metavar="MB")
    p.add_argument("--enable-cors-header", nargs="?", const="*", default=None, metavar="ORIGIN")
    p.add_argument("--disable-metadata", action="store_true")
    p.add_argument("--front-end-root", default=None, metavar="DIR")
    p.add_argument("--auth-token", default=os.environ.get("LATENTGRAPH_AUTH_TOKEN"),
                   help="require this token (Authorization: Bearer, ?token=, or cookie) on HTTP and WS")
    p.add_argument("--i-know-this-is-open", action="store_true",
                   help="allow listening on a non-loopback address without --auth-token")
    p.add_argument("--database", default=None, metavar="FILE",
                   help="SQLite file for queue and history (default <user>/queue.sqlite3)")
    p.add_argument("--max-history", type=int, default=10_000)
    p.add_argument("--verbose", nargs="?", const="DEBUG", default="INFO")
    return p


@dataclass
class ServerOptions:
    """Parsed options with the cross-flag rules applied."""

    ns: argparse.Namespace

    def __getattr__(self, name):
        return getattr(self.ns, name)

    @property
    def hosts(self) -> list[str]:
        return [h.strip() for h in self.ns.listen.split(",") if h.strip()]

    @property
    def cache_policy(self) -> dict:
        if self.ns.cache_none:
            return {"policy": "none"}
        if self.ns.cache_lru:
            return {"policy": "lru", "lru_size": self.ns.cache_lru}
        if self.ns.cache_ram is not None:
            return {"policy": "ram", "ram_bytes": int(self.ns.cache_ram * 2**30)}
        return {"policy": "classic"}

    @property
    def max_upload_bytes(self) -> int:
        return int(self.ns.max_upload_size * 1024 * 1024)

    @property
    def loopback_only(self) -> bool:
        return all(is_loopback(h) for h in self.hosts)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str]) -> ServerOptions:
    ns = build_parser().parse_args(argv)
    ns.extra_model_paths_config = [p for group in ns.extra_model_paths_config for p in group]
    opts = ServerOptions(ns)
    if ns.max_upload_size <= 0:
        raise ArgsError("--max-upload-size must be positive")
    if ns.max_history < 1:
        raise ArgsError("--max-history must be at least 1")
    if not opts.loopback_only and not ns.auth_token and not ns.i_know_this_is_open:
        raise ArgsError(
            f"refusing to listen on {ns.listen} without --auth-token: anyone on the network could run "
            "workflows and read your files. Set --auth-token TOKEN, or pass --i-know-this-is-open.")
    return opts
