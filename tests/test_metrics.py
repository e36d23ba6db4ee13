"""unet_fast.metrics against hand-computed cases, an independent transcription of the ISBI/SNEMI3D
Rand script, and scikit-image where it is installed."""
import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.sparse as sparse
import torch

from tolerances import TOLERANCES
from unet_fast import metrics

PRED = np.array([[0, 1], [1, 1]])
TRUE = np.array([[0, 0], [1, 1]])


@pytest.mark.parametrize("convert", [np.asarray, torch.as_tensor, lambda a: torch.as_tensor(a.T.copy()).T])
def test_pixel_metrics_by_hand(convert):
    p, t = convert(PRED), convert(TRUE)
    np.testing.assert_allclose(metrics.iou(p, t), [1 / 2, 2 / 3])
    np.testing.assert_allclose(metrics.dice(p, t), [2 / 3, 4 / 5])
    assert metrics.pixel_error(p, t) == 0.25
    assert metrics.foreground_iou(p, t) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(metrics.confusion_matrix(p, t), [[1, 1], [0, 2]])


def test_absent_class_is_nan_and_ignore_index():
    result = metrics.iou(PRED, TRUE, num_classes=3)
    assert np.isnan(result[2]) and result[1] == pytest.approx(2 / 3)
    true = np.array([[0, 255], [1, 1]])
    assert metrics.pixel_error(PRED, true, ignore_index=255) == 0.0
    np.testing.assert_allclose(metrics.iou(PRED, true, ignore_index=255), [1.0, 1.0])


def test_a_class_table_beyond_its_limit_is_refused_naming_the_instance_metrics():
    """Instance ids in the millions made confusion_matrix ask for a table of terabytes (a crash, or the machine
    swapping); its limit is MAX_CLASSES, and the message names the metrics that take ids."""
    ids = np.array([[0, 3_000_000], [5, 5]])
    for metric in (metrics.iou, metrics.dice, metrics.confusion_matrix):
        with pytest.raises(ValueError, match="foreground_iou, object_scores"):
            metric(ids, ids)
    with pytest.raises(ValueError, match="4097 x 4097"):
        metrics.iou(PRED, TRUE, num_classes=metrics.MAX_CLASSES + 1)
    top = metrics.MAX_CLASSES - 1                                      # the largest allowed label still counts
    assert metrics.confusion_matrix(np.array([top]), np.array([top]))[top, top] == 1
    assert metrics.foreground_iou(ids, ids) == 1.0


def test_foreground_iou_on_instances_and_batches():
    true = np.zeros((2, 6, 6), int)
    true[0, 1:4, 1:4], true[1, 1:4, 1:4] = 1, 2
    pred = np.zeros_like(true)
    pred[:, 1:4, 1:3] = 7
    assert metrics.foreground_iou(pred, true) == pytest.approx(12 / 18)


def snemi_adapted_rand(seg, gt):
    """The SNEMI3D / ISBI script's formula, transcribed independently (sparse contingency table)."""
    segA, segB = np.ravel(gt), np.ravel(seg)
    n = segA.size
    p_ij = sparse.csr_matrix((np.ones(n), (segA, segB)), shape=(segA.max() + 1, segB.max() + 1))
    a = p_ij[1:, :]
    b = p_ij[1:, 1:]
    c = p_ij[1:, 0].toarray()
    a_i, b_i = np.asarray(a.sum(1)).ravel(), np.asarray(b.sum(0)).ravel()
    sum_a = (a_i * a_i).sum()
    sum_b = (b_i * b_i).sum() + c.sum() / n
    sum_ab = b.multiply(b).sum() + c.sum() / n
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    return 1 - 2 * precision * recall / (precision + recall), precision, recall


def test_rand_by_hand():
    true = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])
    split = np.array([[1, 1, 2, 2], [0, 0, 0, 0]])
    scores = metrics.rand_scores(split, true)  # p = [[2, 2]]: 8 / 8 precision, 8 / 16 recall
    assert (scores.precision, scores.recall, scores.error) == pytest.approx((1.0, 0.5, 1 / 3))
    merged = metrics.rand_scores(np.array([[3, 3, 3, 3], [3, 3, 0, 0]]), np.array([[1, 1, 2, 2], [0, 0, 0, 0]]))
    assert (merged.precision, merged.recall) == pytest.approx((0.5, 1.0))  # background 3s are not counted
    assert metrics.rand_error(true, true) == 0.0
    hole = metrics.rand_scores(np.array([[1, 1, 1, 0], [0, 0, 0, 0]]), true)  # one unassigned pixel, n = 8
    assert (hole.precision, hole.recall) == pytest.approx((1.0, (9 + 1 / 8) / 16))


def test_rand_matches_the_challenge_script():
    rng = np.random.default_rng(0)
    true = ndi.label(ndi.gaussian_filter(rng.random((60, 70)), 2) > 0.5)[0]
    pred = ndi.label(ndi.gaussian_filter(rng.random((60, 70)), 2) > 0.48)[0]
    ours = metrics.rand_scores(torch.as_tensor(pred), true)
    assert (ours.error, ours.precision, ours.recall) == pytest.approx(snemi_adapted_rand(pred, true), rel=TOLERANCES[torch.float64][0])
    batch = metrics.rand_scores(np.stack([pred, true]), np.stack([true, true]))
    assert batch.error == pytest.approx((ours.error + 0.0) / 2)


def test_rand_close_to_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    true = ndi.label(ndi.gaussian_filter(rng.random((80, 80)), 3) > 0.5)[0]
    pred = ndi.label(ndi.gaussian_filter(rng.random((80, 80)), 3) > 0.5)[0] + 1  # no predicted background
    ours = metrics.rand_error(pred, true)
    theirs = skm.adapted_rand_error(true, pred)[0]
    # skimage counts unordered pairs without a pixel paired with itself; the challenge counts p_ij^2.
    # They differ by the self pairs: n_fg against sums of squared object sizes.
    n_fg = (true > 0).sum()
    sizes = np.bincount(true[true > 0])
    assert abs(ours - theirs) <= 2 * n_fg / np.square(sizes).sum()
    assert metrics.rand_error(true, true) == skm.adapted_rand_error(true, true)[0] == 0.0


def square(canvas, label, y, x, size):
    canvas[y:y + size, x:x + size] = label


def test_object_scores_by_hand():
    true = np.zeros((20, 20), int)
    pred = np.zeros_like(true)
    square(true, 1, 0, 0, 4)      # found: IoU 12 / 16
    square(pred, 5, 0, 1, 4)
    square(true, 2, 10, 10, 3)    # missed: IoU 3 / 15
    square(pred, 6, 12, 10, 3)
    square(true, 3, 16, 0, 2)     # missed entirely
    square(pred, 7, 6, 14, 2)     # spurious
    scores = metrics.object_scores(pred, true)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (1, 2, 2)
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert scores.mean_matched_iou == pytest.approx(0.6)
    binary = metrics.object_scores(torch.as_tensor(pred > 0), true > 0, connected_components=True)
    assert (binary.true_positives, binary.false_positives, binary.false_negatives) == (1, 2, 2)
    batch = metrics.object_scores(np.stack([pred, true]), np.stack([true, true]))
    assert (batch.true_positives, batch.false_positives, batch.false_negatives) == (4, 2, 2)


def test_scores_over_iou_thresholds_by_hand():
    true = np.zeros((20, 20), int)
    pred = np.zeros_like(true)
    square(true, 1, 0, 0, 4)      # IoU 12 / 20 = 0.6: matched at 0.5, 0.55, 0.6
    square(pred, 5, 0, 1, 4)
    square(true, 3, 16, 0, 2)     # missed
    square(pred, 7, 6, 14, 2)     # spurious
    square(true, 2, 10, 10, 3)    # exact
    square(pred, 9, 10, 10, 3)
    assert metrics.IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    by_threshold = metrics.object_scores_by_threshold(pred, true)
    assert [s.true_positives for s in by_threshold] == [2, 2, 2] + [1] * 7
    assert [s.accuracy for s in by_threshold] == pytest.approx([0.5] * 3 + [0.2] * 7)
    assert metrics.average_precision(pred, true) == pytest.approx((3 * 0.5 + 7 * 0.2) / 10)
    assert by_threshold[0] == metrics.object_scores(pred, true)
    assert metrics.average_precision(np.zeros((3, 3), int), np.zeros((3, 3), int)) == 1.0
    with pytest.raises(ValueError, match="every threshold must be in"):
        metrics.object_scores_by_threshold(pred, true, [0.5, 1.5])


def test_object_scores_tie_at_half_and_empty():
    true = np.zeros((4, 4), int)
    true[0, :] = 1
    pred = np.zeros_like(true)
    pred[0, :2], pred[0, 2:] = 1, 2  # both have IoU exactly 0.5: only one may match
    scores = metrics.object_scores(pred, true)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (1, 1, 0)
    empty = metrics.object_scores(np.zeros((4, 4), int), np.zeros((4, 4), int))
    assert (empty.precision, empty.recall, empty.f1) == (1.0, 1.0, 1.0)
    nothing_found = metrics.object_scores(np.zeros((4, 4), int), true)
    assert (nothing_found.recall, nothing_found.f1) == (0.0, 0.0)


def test_a_ratio_of_nothing_scores_the_image_not_a_perfect_one():
    """0/0: precision when nothing was predicted, recall when there was nothing to find. Averaged over images
    (evaluate's mean row), a 1.0 for a model that finds nothing in an image of cells would flatter it."""
    true = np.zeros((6, 6), int)
    true[1:3, 1:3] = 1
    nothing_predicted = metrics.object_scores(np.zeros_like(true), true)
    assert (nothing_predicted.precision, nothing_predicted.recall, nothing_predicted.f1) == (0.0, 0.0, 0.0)
    nothing_to_find = metrics.object_scores(true, np.zeros_like(true))
    assert (nothing_to_find.precision, nothing_to_find.recall, nothing_to_find.f1) == (0.0, 0.0, 0.0)
    assert metrics.scores_from_counts(0, 0, 0).precision == metrics.scores_from_counts(0, 0, 0).recall == 1.0
    assert metrics.scores_from_counts(0, 0, 3).precision == 0.0 and metrics.scores_from_counts(0, 2, 0).recall == 0.0


def test_bad_inputs():
    with pytest.raises(TypeError, match="argmax"):
        metrics.iou(np.zeros((2, 2)), TRUE)
    with pytest.raises(TypeError, match="numpy array or a torch.Tensor"):
        metrics.dice([[0, 1]], TRUE)
    with pytest.raises(ValueError, match="same shape"):
        metrics.pixel_error(PRED, TRUE[:1])
    with pytest.raises(ValueError, match="num_classes"):
        metrics.iou(PRED, TRUE, num_classes=1)
    with pytest.raises(ValueError, match="labels >= 0"):
        metrics.rand_error(-PRED, TRUE)
    with pytest.raises(ValueError, match="one image"):
        metrics.object_scores(np.zeros((1, 1, 2, 2), int), np.zeros((1, 1, 2, 2), int))
    with pytest.raises(ValueError, match="iou_threshold"):
        metrics.object_scores(PRED, TRUE, iou_threshold=0)


@pytest.mark.gpu
def test_cuda_inputs():
    p, t = torch.as_tensor(PRED).cuda(), torch.as_tensor(TRUE).cuda()
    np.testing.assert_allclose(metrics.iou(p, t), [1 / 2, 2 / 3])
    assert metrics.object_scores(p, t).true_positives == 1


def stardist_matching_counts(pred, true, threshold):
    """(TP, FP, FN) of StarDist's ``matching`` (stardist.matching), transcribed: one-to-one, the number of pairs at
    or above the threshold first, their IoU only as a tie-break (scaled so that it never outweighs a pair)."""
    from scipy.optimize import linear_sum_assignment
    t_ids, p_ids = np.unique(true[true > 0]), np.unique(pred[pred > 0])
    overlap = np.array([[np.sum((true == t) & (pred == p)) for p in p_ids] for t in t_ids], float).reshape(
        len(t_ids), len(p_ids))
    union = np.array([[np.sum((true == t) | (pred == p)) for p in p_ids] for t in t_ids], float).reshape(overlap.shape)
    scores = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
    n_matched = min(len(t_ids), len(p_ids))
    tp = 0
    if n_matched and np.any(scores >= threshold):
        costs = -(scores >= threshold).astype(float) - scores / (2 * n_matched)
        rows, cols = linear_sum_assignment(costs)
        tp = int(np.count_nonzero(scores[rows, cols] >= threshold))
    return tp, len(p_ids) - tp, len(t_ids) - tp


def test_matching_maximises_pairs_before_their_iou():
    """At a low threshold a chain of overlaps P0-T1-P1-T2-P2-T3 has a matching of 3 pairs of low IoU and one of
    2 pairs of high IoU: the one of most pairs wins (StarDist's rule), whatever the IoUs."""
    true, pred = np.zeros((1, 60), int), np.zeros((1, 60), int)
    true[0, 0:20], true[0, 20:40], true[0, 40:60] = 1, 2, 3
    pred[0, 0:2], pred[0, 2:22], pred[0, 22:42] = 4, 5, 6     # IoU T1-P1 = T2-P2 = 18/22; T1-P0 2/20, T2-P1 = T3-P2 2/38
    scores = metrics.object_scores(pred, true, iou_threshold=0.05)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (3, 0, 0)
    assert scores.mean_matched_iou == pytest.approx((2 / 20 + 2 / 38 + 2 / 38) / 3)
    assert stardist_matching_counts(pred, true, 0.05) == (3, 0, 0)
    at_half = metrics.object_scores(pred, true)             # at 0.5 only the two high pairs qualify
    assert (at_half.true_positives, at_half.mean_matched_iou) == (2, pytest.approx(18 / 22))


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.7])
def test_matching_counts_equal_stardists_on_random_labels(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    for _ in range(5):
        true = ndi.label(ndi.gaussian_filter(rng.random((40, 40)), 1.5) > 0.5)[0]
        pred = ndi.label(ndi.gaussian_filter(rng.random((40, 40)), 1.5) > 0.5)[0] * 3   # other, non-consecutive ids
        s = metrics.object_scores(pred, true, iou_threshold=threshold)
        assert (s.true_positives, s.false_positives, s.false_negatives) == \
            stardist_matching_counts(pred, true, threshold)


def test_uint64_labels_beyond_int64():
    """Label ids above 2^63 - 1 (uint64) are ids like any other, not negative numbers."""
    true = np.zeros((4, 4), np.uint64)
    true[:2], true[2:, :2] = 2 ** 63 + 5, 7
    pred = true.copy()
    pred[:2] = 2 ** 64 - 1
    s = metrics.object_scores(pred, true)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (2, 0, 0)
    assert metrics.rand_error(pred, true) == 0.0


def test_rand_scores_of_a_batch_leave_out_images_without_target_objects():
    true = np.zeros((2, 4, 4), int)
    true[0, :2] = 1
    pred = true.copy()
    pred[0, 0, :2] = 2                     # image 0: one object split in two; image 1: nothing to score
    alone = metrics.rand_scores(pred[0], true[0])
    assert np.isnan(metrics.rand_error(pred[1], true[1]))
    assert metrics.rand_scores(pred, true) == alone
    assert np.isnan(metrics.rand_error(np.zeros((2, 3, 3), int), np.zeros((2, 3, 3), int)))


def test_read_only_label_arrays_are_scored_without_a_warning():
    """A memory-mapped TIFF stack's pages are read-only: torch warned on every metric of unet-fast evaluate."""
    import warnings

    truth = np.zeros((8, 8), np.int32)
    truth[1:4, 1:4] = 1
    predicted = truth.copy()
    truth.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.object_scores(predicted, truth).f1 == 1.0
        assert metrics.iou(predicted, truth, num_classes=2)[1] == 1.0


def test_rand_scores_leave_ignored_pixels_out_of_the_image():
    """Pixels nobody annotated are no pixels of the image: not in the pair sums (whatever the target holds there)
    nor among the n of the unassigned pixels' c / n. By hand: a 4-pixel object of which the prediction finds 2,
    in a 10 x 10 image whose lower half (50 pixels) is not annotated: sum p_ij^2 = 4 + 2/50, sum s_j^2 = 4 + 2/50,
    sum t_i^2 = 16, so precision 1, recall 4.04 / 16 (counting the ignored pixels, n = 100: 4.02 / 16)."""
    true = np.zeros((10, 10), np.int64)
    true[:2, :2] = 1
    true[5:] = 9                                 # the unannotated pixels' raw value, not an object
    ignored = true == 9
    pred = np.zeros_like(true)
    pred[0, :2] = 4
    pred[6:8, 3:6] = 5                           # an object in the unannotated half: no pair
    recall = (4 + 2 / 50) / 16
    scores = metrics.rand_scores(pred, true, ignored=ignored)
    assert (scores.precision, scores.recall, scores.error) == pytest.approx((1.0, recall, 1 - 2 * recall / (1 + recall)),
                                                                            rel=1e-12)
    assert metrics.rand_error(pred, true, ignored=ignored) == scores.error
    batch = metrics.rand_scores(np.stack([pred, pred]), np.stack([true, true]), ignored=np.stack([ignored, ignored]))
    assert batch.recall == pytest.approx(recall, rel=1e-12)
    assert metrics.rand_scores(pred, np.where(ignored, 0, true)).recall == pytest.approx((4 + 2 / 100) / 16, rel=1e-12)
    with pytest.raises(ValueError, match="ignored must have the target's shape"):
        metrics.rand_scores(pred, true, ignored=ignored[:5])


@pytest.mark.parametrize("dtype", ["Q", ">u2", ">i8", ">u8"])
def test_label_maps_of_numpys_other_64_bit_names_and_of_the_other_byte_order(dtype):
    """tifffile reads a uint64 TIFF as numpy.ulonglong ('Q'), and a big-endian array comes from np.load or a
    memory map: torch.from_numpy took neither (a TypeError from unet-fast evaluate on uint64 label files)."""
    true = np.zeros((4, 4), np.int64)
    true[:2], true[2:, :2] = 5, 7
    pred = true.copy()
    pred[3, 3] = 9
    s = metrics.object_scores(pred.astype(dtype), true.astype(dtype))
    assert (s.true_positives, s.false_positives, s.false_negatives) == (2, 1, 0)
    assert metrics.iou(pred.astype(dtype) > 0, true.astype(dtype) > 0)[1] == pytest.approx(12 / 13)
    assert metrics.rand_error(pred.astype(dtype), true.astype(dtype)) == 0.0
