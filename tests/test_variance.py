import pytest
import torch

from attnlib.variance import class_share


def test_a_value_set_by_the_class_alone_has_share_one_and_one_independent_of_it_zero():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    by_class = torch.tensor([1.0, 1.0, 3.0, 3.0, 8.0, 8.0])
    same_means = torch.tensor([0.0, 2.0, 0.0, 2.0, 0.0, 2.0])  # every class has mean 1
    share = class_share(torch.stack([by_class, same_means], 1), labels)
    assert share.tolist() == pytest.approx([1.0, 0.0])


def test_the_share_is_the_count_weighted_between_class_variance_over_the_total():
    labels = torch.tensor([0, 0, 0, 1])
    values = torch.tensor([[0.0], [1.0], [2.0], [5.0]])
    # class means 1 and 5, overall mean 2: between = (3 * 1 + 1 * 9) / 4 = 3; total = (4 + 1 + 0 + 9) / 4 = 3.5
    assert class_share(values, labels).item() == pytest.approx(3 / 3.5)


def test_a_constant_column_has_no_share_and_bad_shapes_are_named():
    labels = torch.tensor([0, 1])
    assert class_share(torch.ones(2, 1), labels).isnan().all()
    with pytest.raises(ValueError, match=r"values must be \(images, columns\)"):
        class_share(torch.ones(3, 1), labels)


def test_class_means_are_per_class_column_means_in_class_order():
    from attnlib.variance import class_means

    classes, means, counts = class_means(torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]]), torch.tensor([7, 2, 7]))
    assert classes.tolist() == [2, 7] and counts.tolist() == [1, 2]
    assert means.tolist() == [[3.0, 2.0], [3.0, 2.0]]
