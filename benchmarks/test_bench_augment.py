"""Elastic deformation of a 512x512 image plus its labels: unet_fast.augment vs elasticdeform.

Baseline: elasticdeform.deform_random_grid([image, labels], sigma=10, points=3, order=[3, 0]) (its C
code, single-threaded); where elasticdeform is not installed, the same pipeline in scipy
(map_coordinates for the field, order 3 for the image, 0 for the labels), named as such.
CPU: at 1 torch thread (one core each, the DataLoader-worker setting) and at torch's default.
CUDA (gpu-marked): a batch of 64 samples against the baseline run on 64 samples one by one.
"""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from unet_fast import augment

try:
    import elasticdeform
except ImportError:  # the benchmark falls back to a scipy pipeline, named honestly
    elasticdeform = None

SIZE = 512
BASELINE = "baseline_elasticdeform" if elasticdeform is not None else "baseline_scipy_map_coordinates"


def scipy_deform_random_grid(image, labels, sigma=10.0, points=3, rng=np.random):
    lattice = rng.randn(2, points, points) * sigma
    where = np.meshgrid(*(np.linspace(0, points - 1, n) for n in image.shape), indexing="ij")
    field = [ndi.map_coordinates(lattice[d], where, order=3, mode="mirror") for d in range(2)]
    coords = [np.arange(n).reshape(-1, 1) if d == 0 else np.arange(n) for d, n in enumerate(image.shape)]
    points_ = [c + f for c, f in zip(coords, field)]
    return (ndi.map_coordinates(image, points_, order=3, mode="mirror"),
            ndi.map_coordinates(labels, points_, order=0, mode="mirror"))


def baseline(image, labels):
    if elasticdeform is not None:
        return elasticdeform.deform_random_grid([image, labels], sigma=10, points=3, order=[3, 0])
    return scipy_deform_random_grid(image, labels)


def sample(batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, SIZE, SIZE, generator=gen)
    labels = torch.randint(0, 20, (batch, SIZE, SIZE), generator=gen)
    return image, labels


def bytes_moved(batch):  # image in + out (fp32) and labels in + out (int64)
    return batch * SIZE * SIZE * (4 + 4 + 8 + 8) / 1e9


@pytest.fixture
def torch_threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param or before)
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.mark.parametrize("torch_threads", [1, None], ids=["1-thread", "default-threads"], indirect=True)
@pytest.mark.parametrize("impl", ["unet_fast", BASELINE])
def test_elastic_cpu(timed, benchmark, impl, torch_threads):
    image, labels = sample(1)
    gen = torch.Generator().manual_seed(1)
    if impl == "unet_fast":
        fn = lambda: augment.elastic_deform(image, labels, sigma=10.0, grid=3, generator=gen)  # noqa: E731
    else:
        im, lab = image[0, 0].numpy(), labels[0].numpy()
        fn = lambda: baseline(im, lab)  # noqa: E731
    benchmark.group = f"elastic 512x512 image+labels cpu, {torch_threads} torch threads"
    benchmark.extra_info.update(gbytes=bytes_moved(1), samples=1)
    timed(fn, rounds=20, warmup_rounds=2)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["unet_fast", BASELINE])
def test_elastic_cuda_batch64(timed, benchmark, impl):
    batch = 64
    image, labels = sample(batch)
    benchmark.group = "elastic 64 x 512x512 image+labels: cuda batch vs cpu baseline one by one"
    benchmark.extra_info.update(gbytes=bytes_moved(batch), samples=batch)
    if impl == "unet_fast":
        image, labels = image.cuda(), labels.cuda()
        gen = torch.Generator(device="cuda").manual_seed(1)
        timed(augment.elastic_deform, image, labels, generator=gen, device="cuda", rounds=20)
    else:
        pairs = [(image[i, 0].numpy(), labels[i].numpy()) for i in range(batch)]
        timed(lambda: [baseline(im, lab) for im, lab in pairs], rounds=3)
