"""A small model served until SIGINT, for the fuzz test: ``python fuzz_target.py EXPOSURE``.

Prints the server's URL on the first line of stdout once it listens. The model is seeded,
so every run serves the same one.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from mallory.serve import Server, serve_forever
from mallory.systems import TorchModel


def main() -> None:
    exposure = sys.argv[1]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    system = TorchModel(net, input_shape=(2, 3), bounds=(0.0, 1.0), name="small")

    def ready(server: Server) -> None:
        print(server.url, flush=True)

    serve_forever(
        system,
        exposure=exposure,
        top_k=2 if exposure == "top-k" else None,
        max_batch=8,
        read_timeout=2.0,
        ready=ready,
    )


if __name__ == "__main__":
    main()
