"""Target encoding, class weights and the training rows, checked on tiny hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from softmaxce.classifier._targets import TrainingData, class_weight_vector, encode_targets


def test_labels_become_indices_into_sorted_classes():
    target, soft, classes = encode_targets(["dog", "cat", "eel", "cat"], None, None, incremental=False)
    assert not soft and target.dtype == np.int64
    np.testing.assert_array_equal(classes, ["cat", "dog", "eel"])
    np.testing.assert_array_equal(target, [1, 0, 2, 0])
    again, _, same = encode_targets(["eel"], None, classes, incremental=True)
    assert same is classes and again.tolist() == [2]
    with pytest.raises(ValueError, match="not in classes_"):
        encode_targets(["cow"], None, classes, incremental=True)
    with pytest.raises(ValueError, match="not the same as on the first call"):
        encode_targets(["cat"], ["cat", "dog"], classes, incremental=True)


def test_soft_targets_and_their_columns():
    Y = np.array([[0.25, 0.75], [1.0, 0.0]])
    target, soft, classes = encode_targets(Y, None, None, incremental=False)
    assert soft and target.flags.c_contiguous
    np.testing.assert_array_equal(target, Y)
    np.testing.assert_array_equal(classes, [0, 1])
    _, _, named = encode_targets(Y, ["no", "yes"], None, incremental=True)
    np.testing.assert_array_equal(named, ["no", "yes"])
    with pytest.raises(ValueError, match="sorted and unique"):
        encode_targets(Y, ["yes", "no"], None, incremental=True)
    with pytest.raises(ValueError, match="2 columns but classes has 3 labels"):
        encode_targets(Y, ["a", "b", "c"], None, incremental=True)
    with pytest.raises(ValueError, match="the model has 3 classes"):
        encode_targets(Y, None, np.array([0, 1, 2]), incremental=True)


def test_balanced_and_dict_class_weights():
    classes = np.array(["a", "b", "c"])
    # counts 3, 1, 0 of n = 4: n / (C count) = 4/9, 4/3, and 1 for the class without samples
    w = class_weight_vector("balanced", classes, np.array([0, 0, 0, 1]), soft=False)
    np.testing.assert_allclose(w, [4 / 9, 4 / 3, 1.0])
    soft = class_weight_vector("balanced", classes, np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]]), soft=True)
    np.testing.assert_allclose(soft, [2 / 3, 4 / 3, 4 / 3])  # column sums 1, 0.5, 0.5
    np.testing.assert_array_equal(class_weight_vector({"b": 3}, classes, None, soft=False), [1, 3, 1])
    objects = classes.astype(object)
    np.testing.assert_array_equal(class_weight_vector({"c": 0.5}, objects, None, soft=False), [1, 1, 0.5])
    assert class_weight_vector(None, classes, None, soft=False) is None
    with pytest.raises(ValueError, match="'z', which is not in classes_"):
        class_weight_vector({"z": 1.0}, classes, None, soft=False)


def test_training_data_split_accuracy_and_size():
    X = np.arange(40.0).reshape(20, 2)
    data = TrainingData(X, np.arange(20) % 2, np.ones(20))
    train, val = data.split(np.random.RandomState(0), 0.2)
    assert len(train) == 16 and len(val) == 4
    assert np.bincount(val.target).tolist() == [2, 2]  # stratified
    soft_rows = TrainingData(X, np.full((20, 2), 0.5), np.ones(20))  # soft targets: not stratified
    with pytest.raises(ValueError, match="validation set is too small"):
        soft_rows.split(np.random.RandomState(0), 0.05)
    z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    weighted = TrainingData(np.zeros((3, 1)), np.array([0, 0, 0]), np.array([1.0, 2.0, 3.0]))
    assert weighted.accuracy(z) == pytest.approx(4 / 6)
    soft = TrainingData(np.zeros((3, 1)), np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]]), np.zeros(3))
    assert soft.accuracy(z) == pytest.approx(2 / 3)  # zero total weight: the plain mean
