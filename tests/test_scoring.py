"""The pure math: ensembling, scaling, softmax or sigmoid, top-k."""

from __future__ import annotations

import torch

from clipzs import scoring


def test_class_embedding_is_unit_mean_of_unit_prompts() -> None:
    prompts = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    expected = torch.tensor([0.5, 0.5]) / torch.tensor([0.5, 0.5]).norm()
    assert torch.allclose(scoring.class_embedding(prompts), expected)


def test_classifier_matrix_is_d_by_c_with_unit_columns() -> None:
    weights = scoring.classifier_matrix([torch.randn(7, 16), torch.randn(1, 16), torch.randn(3, 16)])
    assert weights.shape == (16, 3)
    assert torch.allclose(weights.norm(dim=0), torch.ones(3))


def test_logits_use_the_learned_scale_and_bias() -> None:
    features = scoring.normalize(torch.tensor([[1.0, 0.0]]))
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(scoring.logits(features, weights, 50.0), torch.tensor([[50.0, 0.0]]))
    assert torch.allclose(scoring.logits(features, weights, 10.0, -5.0), torch.tensor([[5.0, -5.0]]))


def test_softmax_sums_to_one_sigmoid_does_not() -> None:
    logits = torch.tensor([[2.0, 2.0, 2.0]])
    assert torch.allclose(scoring.probabilities(logits, sigmoid=False).sum(), torch.tensor(1.0))
    assert torch.allclose(scoring.probabilities(logits, sigmoid=True), torch.sigmoid(logits))


def test_top_k_is_clipped_to_the_class_count() -> None:
    logits = torch.tensor([[0.1, 0.7, 0.2]]).log()
    values, indices = scoring.top_k(logits, 5, sigmoid=False)
    assert indices.tolist() == [[1, 2, 0]]
    assert torch.allclose(values, torch.tensor([[0.7, 0.2, 0.1]]))


def test_top_k_ranks_saturated_sigmoids_by_logit() -> None:
    """Sigmoids of logits above about 17 are all 1.0 in float32: the logits still rank them."""
    logits = torch.tensor([[21.6, 32.8, -6.4]])
    assert scoring.probabilities(logits, sigmoid=True)[0, 0] == scoring.probabilities(logits, sigmoid=True)[0, 1]
    values, indices = scoring.top_k(logits, 2, sigmoid=True)
    assert indices.tolist() == [[1, 0]]
    assert values.tolist() == [[1.0, 1.0]]
