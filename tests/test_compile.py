"""Every chapter's layer under torch.compile (one graph, no breaks) and channels_last.

``fullgraph=True`` makes any graph break an error. The ``aot_eager`` backend traces the
forward and the backward through AOTAutograd like the default backend, without generating
code, so the test takes seconds; a layer that compiles here has no break under inductor
either (breaks are decided by Dynamo, before any backend runs).
"""
from __future__ import annotations

import pytest
import torch

from attnlib.models import build_model

PARTS = {
    "IEBN": dict(norm="iebn"),
    "SE": dict(attention="se"),
    "BA": dict(attention="ba"),
    "MABN + CenConv": dict(norm="mabn", conv="cenconv"),
    "NAM": dict(attention="nam"),
    "NAM channel + pixel": dict(attention=("nam", {"spatial": True})),
    "DynamicConv": dict(conv="dynamic"),
}


def _net(parts: dict) -> torch.nn.Module:
    # Half width, not less: torch 2.14's oneDNN 1x1 stride-2 convolution in channels_last with
    # fewer than 8 input channels corrupts the heap on AVX2-only CPUs (abort, segfault, or a
    # hang with 2 threads); the book's networks have 16 or more channels there.
    torch.manual_seed(0)
    net = build_model("resnet20", in_channels=1, num_classes=10, width_mult=0.5, **parts)
    return net.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", PARTS)
def test_layer_trains_under_compile_without_graph_breaks_and_matches_eager(name):
    torch._dynamo.reset()
    eager, compiled_net = _net(PARTS[name]), _net(PARTS[name])
    compiled = torch.compile(compiled_net, backend="aot_eager", fullgraph=True)
    x = torch.randn(6, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (6,))
    for net in (eager, compiled):  # two training steps each: stateful layers (MABN's counter) advance
        opt = torch.optim.SGD((eager if net is eager else compiled_net).parameters(), lr=0.1)
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (key, a), b in zip(eager.state_dict().items(), compiled_net.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name}: {key} differs after 2 compiled steps")
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
