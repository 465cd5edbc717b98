"""The relevance calibration and verdicts on vectors built by hand (numbers whose answer we know)."""

import numpy as np

from clip_retrieval import relevance


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _collection(seed=0, n=60, dim=16, subjects=6):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(subjects, dim)))
    labels = np.arange(n) % subjects
    images = _unit(centres[labels] + 0.1 * rng.normal(size=(n, dim)))
    captions = _unit(centres[labels] + 0.3 * rng.normal(size=(n, dim)))
    return images, captions, labels, centres


def test_matching_pairs_set_the_cutoff_and_separate_from_random_pairs():
    images, captions, _, centres = _collection()
    cal = relevance.fit(images, captions, np.arange(len(images)))
    ref = cal.reference("text")
    assert ref.source == "captions" and ref.informative and ref.separation > 0.85
    on_topic = images @ centres[0]
    verdicts = relevance.judge(np.sort(on_topic)[::-1][:5], ref)
    assert all(v.relevant for v in verdicts)
    off_topic = images @ _unit(np.random.default_rng(9).normal(size=(1, 16)))[0]
    assert not any(v.relevant for v in relevance.judge(np.sort(off_topic)[::-1][:5], ref))


def test_bands_follow_the_reference():
    ref = relevance.Reference("cosine", 0.5, 0.8, "captions", 10, 0.99)
    assert [v.band for v in relevance.judge(np.array([0.9, 0.6, 0.4]), ref)] == ["high", "medium", "low"]
    assert [v.band_zh for v in relevance.judge(np.array([0.9, 0.6, 0.4]), ref)] == ["高", "中", "低"]


def test_a_model_that_scores_everything_alike_marks_nothing_relevant():
    rng = np.random.default_rng(1)
    images = _unit(rng.normal(size=(40, 16)))     # captions unrelated to their images: random weights
    captions = _unit(rng.normal(size=(40, 16)))
    ref = relevance.fit(images, captions, np.arange(40)).reference("text")
    assert not ref.informative and ref.separation < relevance.MIN_SEPARATION
    assert not any(v.relevant for v in relevance.judge(np.array([0.99, 0.9]), ref))


def test_without_captions_text_is_judged_by_its_standing_in_the_collection():
    images, _, labels, centres = _collection(n=300, dim=32, subjects=30)
    cal = relevance.fit(images)
    ref = cal.reference("text")
    assert cal.text is None and ref.kind == "z"
    scores = images @ centres[2]
    top = np.sort(scores)[::-1][:3]
    assert all(v.relevant for v in relevance.judge(top, ref, scores))
    middling = np.sort(scores)[len(scores) // 2:len(scores) // 2 + 3]
    assert not any(v.relevant for v in relevance.judge(middling, ref, scores))


def test_image_plus_text_needs_the_picture_and_the_words_to_agree():
    ref = relevance.Reference("cosine", 0.9, 0.95, "images", 10, 0.99)
    text_collection = np.linspace(-0.2, 0.4, 50)
    verdicts = relevance.judge_image_text(np.array([0.97, 0.97, 0.5]), np.array([0.6, -0.1, 0.6]),
                                          text_collection, ref)
    assert [v.relevant for v in verdicts] == [True, False, False]


def test_auc_counts_ties_half():
    assert relevance._auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert relevance._auc(np.array([2.0]), np.array([1.0])) == 1.0


def test_without_captions_a_query_bank_sets_the_cutoff_above_what_unrelated_phrases_reach():
    images, _, labels, centres = _collection(n=120, dim=32, subjects=6)
    rng = np.random.default_rng(4)
    bank = _unit(rng.normal(size=(200, 32)))       # phrases for things this collection does not show
    cal = relevance.fit(images, bank=bank)
    ref = cal.reference("text")
    assert ref.source == "query bank" and ref.kind == "cosine"
    best_unrelated = (bank @ images.T).max(axis=1)
    assert np.mean(best_unrelated >= ref.cutoff) <= 0.26
    assert all(v.relevant for v in relevance.judge(np.sort(images @ centres[1])[::-1][:3], ref))
