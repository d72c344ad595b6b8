"""The seed's ResNet-50: state_dict layout and split points, checked against the facts of the original system.

The seed (weiaicunzai/pytorch-cifar100's ResNet-50 on CIFAR-100, 32x32 inputs) has
23 split points, 0..22: the input, after conv1, after each of the 16 bottleneck
blocks of conv2_x..conv5_x (3, 4, 6, 3), after the average pool, after the flatten,
and the logits (100 classes).
"""
import pytest
import torch
from seed_reference import forward, make_state_dict, seed_keys

from exporter.cutpoints import TracedModel
from exporter.models.cifar_resnet import resnet50

# the boundary after each split point, for one 32x32 image
SEED_BOUNDARIES = [(3, 32, 32)] + [(64, 32, 32)] * 3 + [(256, 32, 32)] * 3 + [(512, 16, 16)] * 4 + \
    [(1024, 8, 8)] * 6 + [(2048, 4, 4)] * 3 + [(2048, 1, 1), (2048,), (100,)]


def test_state_dict_layout_matches_the_seed_exactly():
    expected = seed_keys()
    model = resnet50()
    actual = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert len(expected) == 320
    assert actual == expected
    assert sum(p.numel() for p in model.parameters()) == 23705252


def test_seed_layout_loads_strictly_and_matches_an_independent_forward():
    state = make_state_dict(seed=7)
    model = resnet50().eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model(x), forward(state, x)
    assert (ours - ref).abs().max().item() < 1e-4
    assert torch.equal(ours.argmax(1), ref.argmax(1))
    assert ref.abs().max().item() > 0.1  # logits of a useful size, so the comparison means something


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    return TracedModel(resnet50(), (3, 32, 32))


def test_seed_split_points_are_0_to_22_with_the_seed_boundaries(traced):
    assert [p.index for p in traced.points] == list(range(23))
    assert [p.shape for p in traced.points] == SEED_BOUNDARIES
    names = [p.name for p in traced.points]
    assert names[:4] == ["input", "conv1.0", "conv1.1", "conv1"]  # point 3: the output of conv1's conv/bn/relu
    assert traced.points[3].ends == ("conv1", "conv1.2") and traced.points[6].ends == ("conv2_x", "conv2_x.2")
    assert [p.of for p in traced.points[1:5]] == ["Conv2d", "BatchNorm2d", "Sequential", "BottleNeck"]
    assert names[4:7] == ["conv2_x.0", "conv2_x.1", "conv2_x.2"]
    assert names[19:] == ["conv5_x.2", "avg_pool", "flatten", "fc"]
    assert traced.points[3].bytes_per_sample == 256 * 1024
    assert traced.points[20].bytes_per_sample == 8 * 1024
    assert traced.points[-1].params == 23705252


def test_head_then_tail_equals_the_whole_model_at_every_point(traced):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = traced.model(x)
        for p in traced.points:
            head, tail = traced.head(p.index), traced.tail(p.index)
            assert (head is None) == (p.index == 0)
            assert (tail is None) == (p.index == 22)
            y = head(x) if head is not None else x
            assert tuple(y.shape[1:]) == p.shape
            y = tail(y) if tail is not None else y
            assert torch.allclose(y, ref, atol=1e-6), p.index
