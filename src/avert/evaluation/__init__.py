"""Measuring the embedded model with the concept detector: negative prompts and named concepts.

    from avert.evaluation import DEFAULT_PAIRS, evaluate_pairs
    rows = evaluate_pairs(DEFAULT_PAIRS, "runs/embedded/model", seeds=64)   # one PairResult per pair
    print([r.to_dict() for r in rows])

`avert eval negatives` and `avert eval concepts` run these and write docs/eval/.
"""

from avert.evaluation.concepts import CONCEPT_PROMPTS, ConceptResult, evaluate_positive_concepts
from avert.evaluation.negatives import (
    DEFAULT_PAIRS,
    Pair,
    PairResult,
    evaluate_pairs,
    pair_from_texts,
    results_json,
    suppression,
)
from avert.evaluation.speckle import high_frequency_energy, speckle_fraction

__all__ = [
    "CONCEPT_PROMPTS",
    "ConceptResult",
    "DEFAULT_PAIRS",
    "Pair",
    "PairResult",
    "evaluate_pairs",
    "evaluate_positive_concepts",
    "high_frequency_energy",
    "pair_from_texts",
    "results_json",
    "speckle_fraction",
    "suppression",
]
