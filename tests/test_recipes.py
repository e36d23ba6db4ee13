"""unet_fast.recipes: recipes as data, their checks, augmentation and tile sizes; the learning-rate
schedule; RandomRot90."""
import math

import pytest
import torch

from unet_fast import augment, geometry
from unet_fast.data import default_augmentation
from unet_fast.recipes import RECIPES, Recipe, get_recipe
from unet_fast.train import learning_rate


def test_the_two_recipes():
    default, paper = get_recipe("default"), get_recipe("paper")
    assert (default.optimizer, default.lr_schedule, default.batch_size, default.depth) == ("adam", "cosine", 4, 3)
    assert default.warmup_steps > 0 and default.dropout == 0
    assert (paper.optimizer, paper.momentum, paper.lr_schedule, paper.batch_size) == ("sgd", 0.99, "constant", 1)
    assert (paper.depth, paper.base_channels, paper.dropout, paper.tile_size) == (5, 64, 0.5, None)
    assert get_recipe(paper) is paper and set(RECIPES) == {"default", "paper"}
    assert "adam lr 0.001, cosine with" in default.describe() and "90-degree rotations" in default.describe()


def test_replace_keeps_unset_values_and_checks_the_rest():
    recipe = get_recipe("default").replace(lr=0.003, epochs=None, rotation="none", flips=False)
    assert recipe.lr == 0.003 and recipe.epochs == get_recipe("default").epochs
    with pytest.raises(TypeError, match="unknown recipe fields"):
        recipe.replace(learning_rate=1)
    for change, message in [(dict(optimizer="rmsprop"), "optimizer must be one of"), (dict(lr=0), "lr must be > 0"),
                            (dict(momentum=1.0), "momentum must be in"), (dict(warmup_steps=-1), "warmup_steps"),
                            (dict(dropout=1.0), "dropout"), (dict(epochs=0), "epochs must be an integer >= 1"),
                            (dict(rotation="45"), "rotation"), (dict(tile_size=0), "tile_size"),
                            (dict(elastic_sigma=-1), "elastic_sigma"), (dict(percentiles=(5, 2)), "needs high > low"),
                            (dict(percentiles=(1,)), "percentiles must be two numbers"),
                            (dict(gamma=(2.0, 0.5)), "gamma must be a range"), (dict(gamma=(0, 1)), "gamma must be"),
                            (dict(gamma=(1.0,)), "gamma must be"), (dict(gamma=(1, math.inf)), "gamma must be"),
                            (dict(gamma=(True, 2)), "gamma must be"), (dict(zoom=(1.25, 0.8)), "zoom must be"),
                            (dict(zoom=(0, 1)), "zoom must be"), (dict(zoom=(1, math.inf)), "zoom must be"),
                            (dict(zoom=(1.0,)), "zoom must be"), (dict(zoom=(float("nan"), 1)), "zoom must be"),
                            (dict(zoom=(0.1, 1)), "1/8 <= low <= high <= 8"), (dict(zoom=(1, 9)), "zoom must be")]:
        with pytest.raises(ValueError, match=message):
            recipe.replace(**change)
    with pytest.raises(ValueError, match="recipe must be one of"):
        get_recipe("fast")


def test_augmentation_and_tile_sizes():
    kinds = lambda compose: [type(t) for t in compose.transforms]      # noqa: E731
    default = get_recipe("default").augmentation()
    assert kinds(default) == [augment.RandomFlip, augment.RandomRot90, augment.RandomElasticDeform,
                              augment.RandomGreyValue]
    robust = get_recipe("default").replace(imaging=True, gamma=(0.5, 2.0)).augmentation()
    assert kinds(robust) == kinds(default) + [augment.RandomImaging] and robust.transforms[3].gamma == (0.5, 2.0)
    assert kinds(get_recipe("paper").augmentation()) == kinds(default_augmentation())
    assert get_recipe("paper").augmentation().transforms[-1].gamma == (0.7, 1.4)  # the paper recipe as it was
    assert get_recipe("default").replace(gamma=[0.8, 1.25]).gamma == (0.8, 1.25)  # a list (a model file's JSON)
    zoomed = get_recipe("default").replace(zoom=[0.8, 1.25]).augmentation()  # in the deformation's resampling
    assert kinds(zoomed) == kinds(default) and zoomed.transforms[2].zoom == (math.log(0.8), math.log(1.25))
    assert default.transforms[2].zoom == (0.0, 0.0)
    rigid = get_recipe("default").replace(zoom=(0.8, 1.25), elastic_sigma=0).augmentation()
    assert kinds(rigid) == kinds(default)[:2] + [augment.RandomZoom] + kinds(default)[3:]
    bare = get_recipe("default").replace(flips=False, rotation="none", elastic_sigma=0, grey_values=False,
                                         imaging=False)
    assert bare.augmentation() is None
    for name in ("default", "paper"):
        off = get_recipe(name).replace(imaging=True, noise=0.1, zoom=(0.8, 1.25)).without_augmentation()
        assert off.augmentation() is None and off.lr == get_recipe(name).lr
    assert kinds(bare.replace(noise=0.1).augmentation()) == [augment.RandomNoise]
    default = get_recipe("default")
    assert default.tile_for(3, "valid") == 140                  # 100 px out: the same for other networks
    assert [default.tile_for(d, p) for d, p in [(2, "valid"), (4, "valid"), (5, "valid"), (3, "same")]] == \
        [116, 188, 284, 100]
    for depth, padding in [(2, "valid"), (4, "valid"), (5, "valid"), (3, "same")]:
        tile = default.tile_for(depth, padding)
        assert geometry.output_size(tile, depth, padding) >= 100
        assert not any(geometry.is_valid_input_size(n, depth, padding) and geometry.output_size(n, depth, padding)
                       >= 100 for n in range(geometry.min_input_size(depth, padding), tile))
    assert default.replace(tile_size=141).tile_for(3, "valid") == 144     # not legal for its own net: the next
    assert get_recipe("paper").tile_for(5, "valid") is None


def test_learning_rate_warm_up_then_schedule():
    recipe = Recipe(name="t", depth=2, base_channels=2, dropout=0.0, lr=0.1, lr_schedule="cosine", warmup_steps=4)
    assert [learning_rate(recipe, step, 0.0) for step in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert learning_rate(recipe, 10, 0.5) == pytest.approx(0.05)
    assert learning_rate(recipe, 10, 1.7) == 0.0                         # past a time limit: zero, not negative
    assert learning_rate(recipe.replace(lr_schedule="constant"), 10, 0.9) == 0.1


def test_random_rot90_is_exact_and_shared_by_the_targets():
    gen = torch.Generator().manual_seed(0)
    image = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    target = image[:, 0].long()
    turns = set()
    for _ in range(20):
        out, out_target = augment.RandomRot90()(image, target, generator=gen)
        k = next(k for k in range(4) if torch.equal(out, torch.rot90(image, k, (-2, -1))))
        assert torch.equal(out_target, torch.rot90(target, k, (-2, -1)))
        turns.add(k)
    assert turns == {0, 1, 2, 3}
    wide = torch.rand(1, 3, 5)
    for _ in range(10):
        assert augment.RandomRot90()(wide, generator=gen).shape == (1, 3, 5)
    assert math.isfinite(float(augment.RandomRot90()(torch.rand(4, 4)).sum()))


def test_imaging_true_means_the_imaging_defaults_model_files_were_trained_with():
    """A model file records imaging=True, not RandomImaging's settings: changing these defaults would make a
    resumed --imaging run train differently from how it started. Change them only with recipe fields of their own
    (and an UNRECORDED_VALUES entry that keeps these for older files)."""
    imaging = next(t for t in get_recipe("default").replace(imaging=True).augmentation().transforms
                   if isinstance(t, augment.RandomImaging))
    assert (imaging.p, imaging.blur, imaging.illumination, imaging.noise) == (0.2, (0.5, 1.5), 0.5, 0.1)
