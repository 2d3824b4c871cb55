import threading
import time

import numpy as np
import pytest
import torch

from latent2mp4.frames import prefetch, quantise, to_frames


def test_quantise_rounds_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.00392, 1.0, 2.0]).view(1, 1, 1, 6).expand(3, 1, 1, 6)
    assert quantise(x)[0, 0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]


def test_to_frames_yields_hwc_uint8_in_order():
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).view(1, 3, 2, 4, 5)
    frames = list(to_frames([x, x]))
    assert len(frames) == 4 and frames[0].shape == (4, 5, 3) and frames[0].dtype == np.uint8
    assert np.array_equal(frames[1], quantise(x[0])[1].numpy())


def test_prefetch_keeps_order_and_runs_ahead_in_another_thread():
    threads = set()

    def items():
        for i in range(20):
            threads.add(threading.current_thread().name)
            yield i

    assert list(prefetch(items(), depth=3)) == list(range(20))
    assert threads == {"latent2mp4-decode"}


def test_prefetch_reraises_producer_errors():
    def items():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        list(prefetch(items()))


def test_prefetch_stops_the_producer_when_the_consumer_stops():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    gen = prefetch(items(), depth=2)
    assert next(gen) == 0
    gen.close()
    time.sleep(0.3)
    assert len(produced) < 10


@pytest.mark.parametrize(
    "dtype, advice",
    [(torch.float16, "--dtype bf16"), (torch.bfloat16, "--dtype fp32"), (torch.float32, "VAE")],
)
def test_a_non_finite_chunk_stops_before_its_frames(dtype, advice):
    from latent2mp4.errors import DecodeError

    good = torch.zeros(1, 3, 4, 2, 2, dtype=dtype)
    bad = good.clone()
    bad[0, 1, 2, 1, 1] = float("inf") if dtype != torch.float32 else float("nan")
    got = []
    with pytest.raises(DecodeError, match=rf"from frame 4 on hold NaN/Inf.*{advice}") as e:
        for frame in to_frames([good, bad, good]):
            got.append(frame)
    assert len(got) == 4  # the first chunk's frames only
    assert str(dtype).removeprefix("torch.") in str(e.value)
