"""The dynamic batcher: a lone request runs at once; requests still arriving are waited for and run together."""

from __future__ import annotations

import asyncio
import time

import torch

from resnets.serve.batcher import Batcher


def _batcher(sizes: list[int], max_wait_ms: float) -> Batcher:
    return Batcher({"double": lambda x: x * 2}, max_batch=8, max_wait_ms=max_wait_ms, on_batch=sizes.append)


def test_a_lone_request_does_not_wait_for_a_batch_to_fill() -> None:
    sizes: list[int] = []
    batcher = _batcher(sizes, max_wait_ms=30_000)  # were it to wait, the test would take 30 s

    async def one() -> torch.Tensor:
        with batcher.arriving() as arrival:
            return await batcher.submit("double", torch.ones(1, 2), arrival)

    start = time.monotonic()
    out = asyncio.run(one())
    assert torch.equal(out, torch.full((1, 2), 2.0)) and sizes == [1]
    assert time.monotonic() - start < 10  # nothing else was arriving: no wait
    batcher.close()


def test_requests_still_arriving_are_waited_for_and_run_as_one_batch() -> None:
    sizes: list[int] = []
    batcher = _batcher(sizes, max_wait_ms=30_000)

    async def request(value: float, decode_s: float) -> torch.Tensor:
        with batcher.arriving() as arrival:
            await asyncio.sleep(decode_s)  # reading and decoding its images
            return await batcher.submit("double", torch.full((1, 2), value), arrival)

    async def together() -> list[torch.Tensor]:
        return await asyncio.gather(request(1.0, 0.0), request(2.0, 0.3), request(3.0, 0.6))

    outs = asyncio.run(together())
    assert [float(o[0, 0]) for o in outs] == [2.0, 4.0, 6.0]
    assert sizes == [3]  # the first waited for the two still decoding

    async def failing() -> None:
        with batcher.arriving():
            raise ValueError("undecodable")  # leaves without submitting: nobody waits for it

    async def one_fails() -> torch.Tensor:
        results = await asyncio.gather(request(1.0, 0.0), failing(), return_exceptions=True)
        assert isinstance(results[1], ValueError)
        return results[0]

    start = time.monotonic()
    assert float(asyncio.run(one_fails())[0, 0]) == 2.0 and sizes[-1] == 1
    assert time.monotonic() - start < 10
    batcher.close()
