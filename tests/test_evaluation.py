"""Tests for the model-free evaluation protocol in `video2lora.evaluation`."""

import json
import math

import numpy as np
import pytest

from video2lora.evaluation import (
    DEFAULT_MARGINS,
    JUDGE_PROMPT_TEMPLATE,
    BootstrapResult,
    exact_match,
    judge_prompt,
    markdown_report,
    normalize_answer,
    paired_bootstrap,
    parse_judge_score,
    recovered_gain,
    summarize,
    token_f1,
)

# --- text metrics --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat sat on a mat.", "cat sat on mat"),
        ("  An   apple,  THE pear!  ", "apple pear"),
        ("don't", "dont"),
        ("theory another", "theory another"),  # articles only as whole words
        ("the a an ...", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("The red car.", "red car") == 1.0
    assert exact_match("a red car", "the red CAR!") == 1.0
    assert exact_match("red cars", "red car") == 0.0
    assert exact_match("", "the") == 1.0  # both normalise to empty


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the red car", "red car", 1.0),
        ("red car parked", "red car", 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)),  # P = 2/3, R = 1 -> 0.8
        ("blue truck", "red car", 0.0),
        ("", "", 1.0),
        ("the", "a", 1.0),  # both empty after normalisation
        ("", "red car", 0.0),
        ("red car", "", 0.0),
        # Multiplicity: "red" is predicted twice but appears once in the reference, so it counts once.
        ("red red", "red car", 2 * 0.5 * 0.5 / 1.0),
    ],
)
def test_token_f1(prediction, reference, expected):
    assert token_f1(prediction, reference) == pytest.approx(expected)


# --- paired bootstrap ----------------------------------------------------------------------------------------------


def test_bootstrap_point_estimate_and_interval_order():
    a = [0.9, 0.1, 0.5, 0.7, 0.3, 0.8]
    b = [0.6, 0.2, 0.5, 0.4, 0.3, 0.6]
    result = paired_bootstrap(a, b, num_resamples=2000, seed=1)
    assert result.delta == pytest.approx(np.mean(a) - np.mean(b))
    assert result.num_items == 6
    assert result.ci_low < result.delta < result.ci_high
    assert result.num_resamples == 2000 and result.confidence == 0.95


def test_bootstrap_is_deterministic_in_seed_and_antisymmetric():
    rng = np.random.default_rng(3)
    a, b = rng.random(40), rng.random(40)
    first = paired_bootstrap(a, b, num_resamples=500, seed=7)
    assert paired_bootstrap(a, b, num_resamples=500, seed=7) == first
    assert paired_bootstrap(a, b, num_resamples=500, seed=8) != first
    # Same seed -> same resampled indices, so swapping the systems mirrors the interval exactly.
    swapped = paired_bootstrap(b, a, num_resamples=500, seed=7)
    assert swapped.delta == pytest.approx(-first.delta)
    assert swapped.ci_low == pytest.approx(-first.ci_high)
    assert swapped.ci_high == pytest.approx(-first.ci_low)


def test_bootstrap_uses_the_pairing():
    # Both systems vary hugely across items, but V2L is always exactly 0.01 below Base. An unpaired analysis would
    # give a wide interval; the paired one must collapse to the constant difference.
    rng = np.random.default_rng(0)
    base = rng.random(30)
    result = paired_bootstrap(base - 0.01, base, num_resamples=300)
    assert result.ci_low == pytest.approx(-0.01)
    assert result.ci_high == pytest.approx(-0.01)


def test_bootstrap_lower_confidence_gives_a_narrower_interval():
    rng = np.random.default_rng(5)
    a, b = rng.random(50), rng.random(50)
    wide = paired_bootstrap(a, b, num_resamples=1000, confidence=0.99)
    narrow = paired_bootstrap(a, b, num_resamples=1000, confidence=0.5)
    assert wide.ci_high - wide.ci_low > narrow.ci_high - narrow.ci_low


def test_bootstrap_covers_the_true_difference():
    # Synthetic paired scores with a known population difference: b ~ N(0.5, 0.2), a = b + N(true_delta, 0.1).
    true_delta = -0.03
    num_trials, covered = 200, 0
    for trial in range(num_trials):
        rng = np.random.default_rng(1000 + trial)
        b = rng.normal(0.5, 0.2, size=100)
        a = b + rng.normal(true_delta, 0.1, size=100)
        result = paired_bootstrap(a, b, num_resamples=400, seed=trial)
        covered += result.ci_low <= true_delta <= result.ci_high
    coverage = covered / num_trials
    # Nominal 95%; the percentile bootstrap runs slightly liberal at n = 100, and 200 trials add ~1.5% noise.
    assert 0.9 <= coverage <= 0.99, coverage


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ([0.1, 0.2], [0.1], "paired"),
        ([], [], "at least one"),
        ([0.1, float("nan")], [0.1, 0.2], "non-finite"),
        ([[0.1]], [[0.2]], "flat"),
    ],
)
def test_bootstrap_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b)


def test_bootstrap_rejects_bad_settings():
    with pytest.raises(ValueError, match="num_resamples"):
        paired_bootstrap([0.1], [0.2], num_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([0.1], [0.2], confidence=1.0)


def test_bootstrap_chunking_matches_the_statistics(monkeypatch):
    # Force many small chunks: the interval must still be a valid percentile interval of the same distribution.
    import video2lora.evaluation as evaluation

    rng = np.random.default_rng(2)
    a, b = rng.random(200), rng.random(200)
    whole = paired_bootstrap(a, b, num_resamples=4000)
    monkeypatch.setattr(evaluation, "_MAX_BOOTSTRAP_CELLS", 1000)  # 5 rows per chunk
    chunked = paired_bootstrap(a, b, num_resamples=4000)
    assert chunked.delta == whole.delta
    assert chunked.ci_low == pytest.approx(whole.ci_low, abs=0.01)
    assert chunked.ci_high == pytest.approx(whole.ci_high, abs=0.01)


# --- non-inferiority and equivalence decisions ---------------------------------------------------------------------


def test_decisions_on_a_known_interval():
    # A constant difference makes every resample identical, so the interval is exactly [-0.04, -0.04].
    result = paired_bootstrap([0.46] * 20, [0.50] * 20, num_resamples=200)
    assert result.ci_low == pytest.approx(-0.04) and result.ci_high == pytest.approx(-0.04)
    assert result.non_inferior(0.05) and result.equivalent(0.05)  # just inside
    assert not result.non_inferior(0.03) and not result.equivalent(0.03)  # just outside


def test_decisions_flip_at_the_observed_bounds():
    rng = np.random.default_rng(11)
    base = rng.random(60)
    v2l = base + rng.normal(0.0, 0.05, size=60)
    result = paired_bootstrap(v2l, base, num_resamples=1000)
    assert result.ci_low < 0 < result.ci_high  # so both bounds constrain equivalence
    eps = 1e-6
    low, high = -result.ci_low, result.ci_high
    assert result.non_inferior(low + eps)
    assert not result.non_inferior(low - eps)
    widest = max(low, high)
    assert result.equivalent(widest + eps)
    assert not result.equivalent(widest - eps)


def test_equivalence_needs_both_sides_but_non_inferiority_only_the_lower():
    better = BootstrapResult(delta=0.08, ci_low=0.02, ci_high=0.14, num_items=50)
    assert better.non_inferior(0.05)
    assert not better.equivalent(0.05)  # V2L is clearly *better*: not equivalent
    worse = BootstrapResult(delta=-0.08, ci_low=-0.14, ci_high=-0.02, num_items=50)
    assert not worse.non_inferior(0.05)
    assert not worse.equivalent(0.05)


def test_decisions_are_strict_at_the_margin():
    on_margin = BootstrapResult(delta=0.0, ci_low=-0.05, ci_high=0.05, num_items=10)
    assert not on_margin.non_inferior(0.05)
    assert not on_margin.equivalent(0.05)
    with pytest.raises(ValueError, match="margin"):
        on_margin.non_inferior(-0.05)


# --- recovered gain ------------------------------------------------------------------------------------------------


def test_recovered_gain_values():
    assert recovered_gain(0.45, 0.5, 0.3) == pytest.approx(0.75)
    assert recovered_gain(0.5, 0.5, 0.3) == pytest.approx(1.0)
    assert recovered_gain(0.3, 0.5, 0.3) == pytest.approx(0.0)
    assert recovered_gain(0.2, 0.5, 0.3) == pytest.approx(-0.5)
    assert recovered_gain(0.6, 0.5, 0.3) == pytest.approx(1.5)
    # A gap of exactly min_base_gain counts, despite 0.35 - 0.30 rounding to 0.04999...
    assert recovered_gain(0.33, 0.35, 0.30) == pytest.approx(0.6)


def test_recovered_gain_is_none_when_base_does_not_beat_blind():
    assert recovered_gain(0.5, 0.5, 0.5) is None
    assert recovered_gain(0.5, 0.33, 0.30) is None  # gap 0.03 < 0.05
    assert recovered_gain(0.5, 0.2, 0.3) is None  # Base worse than Blind
    assert recovered_gain(0.5, 0.33, 0.30, min_base_gain=0.02) == pytest.approx(20 / 3)
    assert recovered_gain(0.5, 0.3, 0.3, min_base_gain=0.0) is None  # never divides by zero


# --- summarize and the markdown report -----------------------------------------------------------------------------


def _record(item_id, task_type, question_type, base, v2l, blind, judge=None):
    scores = {
        "base": {"token_f1": base, "exact_match": float(base == 1.0)},
        "v2l": {"token_f1": v2l, "exact_match": float(v2l == 1.0)},
        "blind": {"token_f1": blind, "exact_match": float(blind == 1.0)},
    }
    if judge is not None:
        for system, value in zip(("base", "v2l", "blind"), judge, strict=True):
            scores[system]["judge"] = value
    return {"id": item_id, "task_type": task_type, "question_type": question_type, "scores": scores}


@pytest.fixture
def records():
    return [
        # Captions: no question type; only two of four items have judge scores.
        _record("c0", "caption", None, 0.6, 0.5, 0.1, judge=(0.75, 0.5, 0.0)),
        _record("c1", "caption", None, 0.4, 0.4, 0.2, judge=(0.5, 0.5, 0.25)),
        _record("c2", "caption", None, 0.5, 0.6, 0.0),
        _record("c3", "caption", None, 0.3, 0.3, 0.1),
        # QA counting: the video matters (Base beats Blind clearly).
        _record("q0", "qa", "counting", 1.0, 1.0, 0.0),
        _record("q1", "qa", "counting", 1.0, 0.0, 0.0),
        _record("q2", "qa", "counting", 0.5, 0.5, 0.5),
        # QA colour: Blind is as good as Base, so no recovered gain.
        _record("q3", "qa", "color", 1.0, 1.0, 1.0),
        _record("q4", "qa", "color", 0.0, 0.0, 0.0),
    ]


def test_summarize_groups_counts_and_means(records):
    summary = summarize(records, num_resamples=200)
    groups = summary["groups"]
    assert list(groups) == ["overall", "caption", "qa", "qa/color", "qa/counting"]
    assert {name: g["num_items"] for name, g in groups.items()} == {
        "overall": 9, "caption": 4, "qa": 5, "qa/color": 2, "qa/counting": 3,
    }
    assert groups["qa/counting"]["task_type"] == "qa" and groups["qa/counting"]["question_type"] == "counting"
    assert summary["num_items"] == 9
    assert summary["metrics"] == ["judge", "token_f1", "exact_match"]

    f1 = groups["caption"]["metrics"]["token_f1"]
    assert f1["num_items"] == 4
    assert f1["means"]["base"] == pytest.approx(0.45)
    assert f1["means"]["v2l"] == pytest.approx(0.45)
    assert f1["means"]["blind"] == pytest.approx(0.1)
    assert f1["delta"] == pytest.approx(0.0)
    assert f1["recovered_gain"] == pytest.approx(1.0)
    assert f1["margin"] == DEFAULT_MARGINS["token_f1"]

    counting = groups["qa/counting"]["metrics"]["exact_match"]
    assert counting["means"] == pytest.approx({"blind": 0.0, "base": 2 / 3, "v2l": 1 / 3})
    assert counting["delta"] == pytest.approx(-1 / 3)
    assert counting["recovered_gain"] == pytest.approx(0.5)
    assert counting["non_inferior"] is False  # a -1/3 point estimate cannot be non-inferior at 0.05
    assert groups["qa/color"]["metrics"]["token_f1"]["recovered_gain"] is None

    overall = groups["overall"]["metrics"]["token_f1"]
    assert overall["num_items"] == 9
    assert overall["means"]["base"] == pytest.approx(np.mean([0.6, 0.4, 0.5, 0.3, 1.0, 1.0, 0.5, 1.0, 0.0]))


def test_summarize_handles_missing_metrics(records):
    summary = summarize(records, num_resamples=200)
    groups = summary["groups"]
    judge = groups["caption"]["metrics"]["judge"]
    assert judge["num_items"] == 2  # only the items the judge scored
    assert judge["means"]["base"] == pytest.approx(0.625)
    assert judge["margin"] == 0.15
    assert "judge" not in groups["qa"]["metrics"]  # no QA item was judged
    assert groups["overall"]["metrics"]["judge"]["num_items"] == 2

    # Blind missing on one paired item: its mean would cover a different item set, so it is withheld.
    records[0]["scores"]["blind"]["token_f1"] = None
    caption = summarize(records, num_resamples=200)["groups"]["caption"]["metrics"]["token_f1"]
    assert caption["num_items"] == 4
    assert caption["means"]["blind"] is None and caption["recovered_gain"] is None


def test_summarize_margins_and_decisions(records):
    # All token-F1 differences on colour QA are zero, so the interval is [0, 0] and passes any positive margin.
    summary = summarize(records, num_resamples=200, margins={"token_f1": 0.01, "extra": 0.2})
    color = summary["groups"]["qa/color"]["metrics"]["token_f1"]
    assert (color["ci_low"], color["ci_high"]) == (0.0, 0.0)
    assert color["margin"] == 0.01
    assert color["non_inferior"] is True and color["equivalent"] is True
    assert summary["margins"]["judge"] == 0.15  # untouched defaults survive an override
    assert summary["margins"]["extra"] == 0.2


def test_summarize_metric_without_margin_and_json_round_trip(records):
    for record in records:
        for system in ("base", "v2l", "blind"):
            record["scores"][system]["bleu"] = 0.5
    summary = summarize(records, num_resamples=100)
    bleu = summary["groups"]["overall"]["metrics"]["bleu"]
    assert bleu["margin"] is None and bleu["non_inferior"] is None and bleu["equivalent"] is None
    assert summary["metrics"][-1] == "bleu"  # unknown metrics after the known ones
    assert json.loads(json.dumps(summary)) == summary


def test_summarize_is_deterministic(records):
    assert summarize(records, num_resamples=200, seed=4) == summarize(records, num_resamples=200, seed=4)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda rs: rs.clear(), "at least one record"),
        (lambda rs: rs.append(dict(rs[0])), "more than once"),
        (lambda rs: rs[0].pop("task_type"), "task_type"),
        (lambda rs: rs[0]["scores"]["base"].update(token_f1=math.nan), "not finite"),
        (lambda rs: rs[0].update(task_type="overall"), "reserved"),
    ],
)
def test_summarize_rejects_bad_records(records, mutate, match):
    mutate(records)
    with pytest.raises(ValueError, match=match):
        summarize(records, num_resamples=50)


def test_markdown_report(records):
    summary = summarize(records, num_resamples=200)
    report = markdown_report(summary)
    assert "### token_f1 (margin ±0.05)" in report
    assert "### judge (margin ±0.15)" in report
    assert "| group | n | Blind | Base | V2L | Δ [95% CI] | NI | Equiv | recovered gain |" in report
    assert "| caption | 4 | 0.100 | 0.450 | 0.450 | +0.000 [" in report
    assert "| qa/color | 2 | 0.500 | 0.500 | 0.500 | +0.000 [+0.000, +0.000] | yes | yes | – |" in report
    counting_em = [
        line for line in report.splitlines() if line.startswith("| qa/counting | 3 | 0.000 | 0.667 | 0.333 | -0.333")
    ]
    assert len(counting_em) == 1 and counting_em[0].endswith("| no | no | 0.500 |")
    # Each metric table has the overall row plus one row per group scored on that metric.
    assert report.count("| overall |") == 3
    assert report.count("| qa |") == 2  # QA has no judge scores
    assert markdown_report(json.loads(json.dumps(summary))) == report


# --- LLM judge -----------------------------------------------------------------------------------------------------


def test_judge_prompt_contains_the_fields():
    prompt = judge_prompt("How many dogs?", "Three dogs.", " two ")
    assert "Question: How many dogs?" in prompt
    assert "Reference answer: Three dogs." in prompt
    assert "Candidate answer: two\n" in prompt
    assert prompt.rstrip().endswith("Score:")
    assert prompt == JUDGE_PROMPT_TEMPLATE.format(question="How many dogs?", reference="Three dogs.", prediction="two")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("5", 1.0),
        (" 1", 0.0),
        ("3\n", 0.5),
        ("Score: 4", 0.75),
        ("**Rating:** 2. The answer misses the count.", 0.25),
        ("I would give it 4/5.", 0.75),
        ("4 out of 5 because details are missing", 0.75),
        ("On a scale of 1 to 5, I'd say 4.", 0.75),
        ("Score (1-5): 3", 0.5),
        ("The answer is mostly correct. 4", 0.75),
        # Unreadable: no number, out of range, a decimal, or several unlabelled numbers.
        ("The answer is fine.", None),
        ("", None),
        ("0", None),
        ("Score: 7", None),
        ("4.5", None),
        ("between 3 and 4", None),
    ],
)
def test_parse_judge_score(reply, expected):
    assert parse_judge_score(reply) == expected
