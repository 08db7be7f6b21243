"""The paper's evaluation protocol: answer metrics, the paired bootstrap, non-inferiority and equivalence.

Everything here is pure and model-free (docs/design.md §6). The model-running part of `video2lora eval` produces one
record per evaluated item with the scores of three systems on the same item:

- **base**: the frozen VLM with the video in context;
- **v2l**: the frozen VLM with the generated LoRA and no video;
- **blind**: the frozen VLM with neither, answering from the question alone.

and hands the records to [`summarize`], whose output [`markdown_report`] renders. The statistics compare V2L to
Base with a paired bootstrap of Δ = V2L − Base, and report the *recovered gain* (V2L − Blind) / (Base − Blind) so
that "V2L equals Base" cannot be claimed on questions the model answers the same way without the video.

This module must not import model or training code (docs/design.md §10: evaluation does not import training).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MARGINS",
    "JUDGE_PROMPT_TEMPLATE",
    "SYSTEMS",
    "BootstrapResult",
    "exact_match",
    "judge_prompt",
    "markdown_report",
    "normalize_answer",
    "paired_bootstrap",
    "parse_judge_score",
    "recovered_gain",
    "summarize",
    "token_f1",
]

# The three systems scored on every item, in the order reports list them (weakest expected first).
SYSTEMS: tuple[str, ...] = ("blind", "base", "v2l")

# Published margins (docs/design.md §6): 0.15 on the 0-1 judge score, 0.05 on token-F1. Exact match lives on the same
# 0-1 scale as token-F1 and gets the same margin.
DEFAULT_MARGINS: dict[str, float] = {"judge": 0.15, "token_f1": 0.05, "exact_match": 0.05}

# Metrics reported first, in this order; any other metric found in the records follows alphabetically.
_METRIC_ORDER: tuple[str, ...] = ("judge", "token_f1", "exact_match")

_OVERALL = "overall"

# Upper bound on the number of bootstrap indices materialised at once (int64: 32 MiB), so that memory stays flat
# however many items or resamples are asked for.
_MAX_BOOTSTRAP_CELLS = 1 << 22

# Base − Blind differences are differences of means of floats; without a little slack a gap of exactly
# `min_base_gain` (for example 0.35 − 0.30) would be rejected by rounding alone.
_GAIN_TOLERANCE = 1e-9


# ---------------------------------------------------------------------------------------------------------------
# Text normalisation and answer metrics
# ---------------------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the SQuAD evaluation script does.

    Lower-cases, deletes ASCII punctuation (without inserting a space, so "don't" becomes "dont", as in SQuAD),
    removes the articles "a", "an" and "the", and collapses runs of whitespace into single spaces.

    Args:
        text (`str`):
            The raw answer.

    Returns:
        `str`: The normalised answer; empty when nothing but punctuation, articles and whitespace remained.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """Exact match after [`normalize_answer`].

    Args:
        prediction (`str`):
            The system's answer.
        reference (`str`):
            The reference answer.

    Returns:
        `float`: 1.0 when the normalised strings are equal, else 0.0.
    """
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1 between two answers, on [`normalize_answer`]ed text.

    Tokens are counted with multiplicity: a token shared once but predicted twice counts once.

    Args:
        prediction (`str`):
            The system's answer.
        reference (`str`):
            The reference answer.

    Returns:
        `float`: The F1 in [0, 1]. Two empty answers agree perfectly (1.0); exactly one empty answer scores 0.0.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        # SQuAD's convention for unanswerable questions: agreeing on "no answer" is a full match.
        return float(pred_tokens == ref_tokens)
    num_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------------------------
# Paired bootstrap, non-inferiority and equivalence
# ---------------------------------------------------------------------------------------------------------------


def _check_margin(margin: float) -> None:
    if not margin > 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a positive finite number, got {margin!r}")


@dataclass(frozen=True)
class BootstrapResult:
    """A paired-bootstrap estimate of Δ = mean(a) − mean(b) with its percentile confidence interval.

    Args:
        delta (`float`):
            The point estimate, mean(a) − mean(b) over all items.
        ci_low (`float`):
            Lower bound of the percentile confidence interval.
        ci_high (`float`):
            Upper bound of the percentile confidence interval.
        num_items (`int`):
            Number of paired items.
        confidence (`float`, *optional*, defaults to 0.95):
            The interval's nominal coverage.
        num_resamples (`int`, *optional*, defaults to 10000):
            Number of bootstrap resamples behind the interval.
    """

    delta: float
    ci_low: float
    ci_high: float
    num_items: int
    confidence: float = 0.95
    num_resamples: int = 10_000

    def non_inferior(self, margin: float) -> bool:
        """Non-inferiority of `a` to `b`: the interval's lower bound lies above −margin.

        Args:
            margin (`float`):
                The non-inferiority margin, a positive number on the metric's scale.

        Returns:
            `bool`: Whether `ci_low > -margin` (strictly: a bound exactly on the margin does not pass).
        """
        _check_margin(margin)
        return self.ci_low > -margin

    def equivalent(self, margin: float) -> bool:
        """Equivalence of `a` and `b`: the whole interval lies strictly inside (−margin, +margin).

        Args:
            margin (`float`):
                The equivalence margin, a positive number on the metric's scale.

        Returns:
            `bool`: Whether `-margin < ci_low` and `ci_high < margin`.
        """
        _check_margin(margin)
        return -margin < self.ci_low and self.ci_high < margin

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-serialisable dict."""
        return asdict(self)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    num_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Paired bootstrap of Δ = mean(a) − mean(b), with a percentile confidence interval.

    `a[i]` and `b[i]` must be two systems' scores on the same item. Each resample draws item indices with
    replacement and takes the mean of the per-item differences at those indices, which keeps the pairing (and so
    cancels the between-item variance that both systems share).

    Args:
        a (`Sequence[float]`):
            Per-item scores of the first system (V2L in the protocol).
        b (`Sequence[float]`):
            Per-item scores of the second system (Base in the protocol), aligned with `a`.
        num_resamples (`int`, *optional*, defaults to 10000):
            Number of bootstrap resamples.
        confidence (`float`, *optional*, defaults to 0.95):
            Nominal coverage of the interval, in (0, 1).
        seed (`int`, *optional*, defaults to 0):
            Seed of the resampling generator; the result is a deterministic function of the inputs and the seed.

    Returns:
        [`BootstrapResult`]: Δ, its interval and the number of items.

    Raises:
        `ValueError`: If the inputs are empty, of unequal lengths, not one-dimensional or not finite, or if
            `num_resamples` or `confidence` is out of range.
    """
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or b_arr.ndim != 1:
        raise ValueError(f"paired_bootstrap expects two flat sequences, got shapes {a_arr.shape} and {b_arr.shape}")
    if a_arr.shape != b_arr.shape:
        raise ValueError(
            f"paired_bootstrap needs paired scores, but got {a_arr.size} scores in `a` and {b_arr.size} in `b`"
        )
    if a_arr.size == 0:
        raise ValueError("paired_bootstrap needs at least one paired item, got none")
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise ValueError("paired_bootstrap got a non-finite score (NaN or inf)")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be at least 1, got {num_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")

    diffs = a_arr - b_arr
    num_items = diffs.size
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples, dtype=np.float64)
    # Resample in row chunks: one (num_resamples, num_items) index matrix would need gigabytes for large eval sets.
    rows_per_chunk = max(1, _MAX_BOOTSTRAP_CELLS // num_items)
    for start in range(0, num_resamples, rows_per_chunk):
        stop = min(start + rows_per_chunk, num_resamples)
        indices = rng.integers(0, num_items, size=(stop - start, num_items))
        means[start:stop] = diffs[indices].mean(axis=1)

    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return BootstrapResult(
        delta=float(diffs.mean()),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        num_items=int(num_items),
        confidence=float(confidence),
        num_resamples=int(num_resamples),
    )


def recovered_gain(v2l: float, base: float, blind: float, *, min_base_gain: float = 0.05) -> float | None:
    """The share of the video's benefit that the adapter recovers: (V2L − Blind) / (Base − Blind).

    1.0 means V2L gains as much over Blind as Base does; 0.0 means the adapter adds nothing over the question
    alone. When Base barely beats Blind, the question type does not depend on the video and the ratio is noise
    over noise, so docs/design.md §6 counts only types where Base beats Blind clearly; those get `None` here.

    Args:
        v2l (`float`):
            Mean score of V2L (adapter, no video).
        base (`float`):
            Mean score of Base (video in context).
        blind (`float`):
            Mean score of Blind (neither video nor adapter).
        min_base_gain (`float`, *optional*, defaults to 0.05):
            The least Base − Blind for the ratio to be reported.

    Returns:
        `float | None`: The recovered gain (it may exceed 1 or be negative), or `None` when Base − Blind is below
        `min_base_gain` (or not positive).
    """
    base_gain = base - blind
    if base_gain <= 0 or base_gain < min_base_gain - _GAIN_TOLERANCE:
        return None
    return (v2l - blind) / base_gain


# ---------------------------------------------------------------------------------------------------------------
# Summaries over evaluation records
# ---------------------------------------------------------------------------------------------------------------


def _metric_sort_key(name: str) -> tuple[int, str]:
    return (_METRIC_ORDER.index(name), "") if name in _METRIC_ORDER else (len(_METRIC_ORDER), name)


def _validated_scores(record: Mapping[str, Any], index: int) -> dict[str, dict[str, float]]:
    """Checks one record and returns its scores with missing values (absent key or `None`) dropped."""
    for key in ("id", "task_type", "scores"):
        if key not in record:
            raise ValueError(f"record {index} has no {key!r} key: {record!r}")
    scores = record["scores"]
    if not isinstance(scores, Mapping):
        raise ValueError(f"record {record['id']!r}: 'scores' must map system -> metric -> score, got {scores!r}")
    cleaned: dict[str, dict[str, float]] = {}
    for system, metrics in scores.items():
        if metrics is None:
            continue
        if not isinstance(metrics, Mapping):
            raise ValueError(f"record {record['id']!r}: scores[{system!r}] must map metric -> score, got {metrics!r}")
        cleaned[system] = {}
        for metric, value in metrics.items():
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"record {record['id']!r}: scores[{system!r}][{metric!r}] = {value!r} is not finite")
            cleaned[system][metric] = float(value)
    return cleaned


def _summarize_metric(
    items: list[dict[str, dict[str, float]]],
    metric: str,
    *,
    margin: float | None,
    num_resamples: int,
    confidence: float,
    seed: int,
    min_base_gain: float,
) -> dict[str, Any] | None:
    # Δ is paired, so only items scored for both Base and V2L enter; the other systems' means are taken over
    # exactly those items so that every number in a row describes the same item set.
    paired = [s for s in items if metric in s.get("base", {}) and metric in s.get("v2l", {})]
    if not paired:
        return None
    means: dict[str, float | None] = {}
    for system in SYSTEMS:
        values = [s[system][metric] for s in paired if metric in s.get(system, {})]
        # A partially scored system would be averaged over a different item set; report nothing rather than that.
        means[system] = float(np.mean(values)) if len(values) == len(paired) else None

    boot = paired_bootstrap(
        [s["v2l"][metric] for s in paired],
        [s["base"][metric] for s in paired],
        num_resamples=num_resamples,
        confidence=confidence,
        seed=seed,
    )
    gain = None
    if means["blind"] is not None:
        gain = recovered_gain(means["v2l"], means["base"], means["blind"], min_base_gain=min_base_gain)
    return {
        "num_items": boot.num_items,
        "means": means,
        "delta": boot.delta,
        "ci_low": boot.ci_low,
        "ci_high": boot.ci_high,
        "margin": margin,
        "non_inferior": boot.non_inferior(margin) if margin is not None else None,
        "equivalent": boot.equivalent(margin) if margin is not None else None,
        "recovered_gain": gain,
    }


def summarize(
    records: Sequence[Mapping[str, Any]],
    *,
    margins: dict[str, float] | None = None,
    num_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    min_base_gain: float = 0.05,
) -> dict[str, Any]:
    """Summarizes per-item scores into the paper's comparison of V2L against Base, overall and per group.

    Each record describes one evaluated item:

    ```python
    {
        "id": "vid0042/q3",
        "task_type": "qa",                 # e.g. "caption" or "qa"
        "question_type": "counting",       # None for captions
        "scores": {
            "base": {"exact_match": 1.0, "token_f1": 1.0, "judge": 0.75},
            "v2l": {"exact_match": 0.0, "token_f1": 0.5},   # a metric may be missing (absent or None)
            "blind": {"exact_match": 0.0, "token_f1": 0.0},
        },
    }
    ```

    Groups are `"overall"`, every `task_type`, and `"<task_type>/<question_type>"` for items whose question type is
    set. Within a group, a metric is summarized over the items scored on it by both Base and V2L; the Blind mean
    (and so the recovered gain) is reported only when Blind scored all of those items.

    Args:
        records (`Sequence[Mapping[str, Any]]`):
            One record per evaluated item, as above. Ids must be unique: a repeated id would count an item twice.
        margins (`dict[str, float]`, *optional*):
            Non-inferiority / equivalence margin per metric, overriding [`DEFAULT_MARGINS`] key by key. A metric
            without a margin gets its Δ and interval but `None` decisions.
        num_resamples (`int`, *optional*, defaults to 10000):
            Bootstrap resamples per group and metric.
        confidence (`float`, *optional*, defaults to 0.95):
            Coverage of the bootstrap intervals.
        seed (`int`, *optional*, defaults to 0):
            Seed of every bootstrap, which makes the summary deterministic.
        min_base_gain (`float`, *optional*, defaults to 0.05):
            The least Base − Blind for a group's recovered gain to be reported (see [`recovered_gain`]).

    Returns:
        `dict[str, Any]`: A JSON-serialisable summary:

        ```python
        {
            "num_items": 10, "confidence": 0.95, "num_resamples": 10000, "seed": 0, "min_base_gain": 0.05,
            "margins": {"judge": 0.15, "token_f1": 0.05, "exact_match": 0.05},
            "metrics": ["token_f1", "exact_match"],
            "groups": {
                "overall": {
                    "task_type": None, "question_type": None, "num_items": 10,
                    "metrics": {
                        "token_f1": {
                            "num_items": 10, "means": {"blind": 0.1, "base": 0.6, "v2l": 0.55},
                            "delta": -0.05, "ci_low": -0.12, "ci_high": 0.02, "margin": 0.05,
                            "non_inferior": False, "equivalent": False, "recovered_gain": 0.9,
                        },
                        ...
                    },
                },
                "caption": {...}, "qa": {...}, "qa/counting": {...},
            },
        }
        ```

    Raises:
        `ValueError`: If `records` is empty, a record lacks `id`, `task_type` or `scores`, a score is not a finite
            number, an id repeats, or a task type is named "overall".
    """
    if not records:
        raise ValueError("summarize needs at least one record, got none")
    resolved_margins = {**DEFAULT_MARGINS, **(margins or {})}
    for metric, margin in resolved_margins.items():
        try:
            _check_margin(margin)
        except ValueError as err:
            raise ValueError(f"margin for {metric!r}: {err}") from None

    groups: dict[str, list[dict[str, dict[str, float]]]] = {_OVERALL: []}
    group_keys: dict[str, tuple[str | None, str | None]] = {_OVERALL: (None, None)}
    metric_names: set[str] = set()
    seen_ids: set[Any] = set()
    for index, record in enumerate(records):
        scores = _validated_scores(record, index)
        if record["id"] in seen_ids:
            raise ValueError(f"record id {record['id']!r} appears more than once")
        seen_ids.add(record["id"])
        task_type = str(record["task_type"])
        if task_type == _OVERALL:
            raise ValueError(f"task_type {_OVERALL!r} is reserved for the all-items group")
        question_type = record.get("question_type")
        names = [_OVERALL, task_type]
        group_keys.setdefault(task_type, (task_type, None))
        if question_type is not None:
            name = f"{task_type}/{question_type}"
            group_keys.setdefault(name, (task_type, str(question_type)))
            names.append(name)
        for name in names:
            groups.setdefault(name, []).append(scores)
        for metrics in scores.values():
            metric_names.update(metrics)

    ordered_metrics = sorted(metric_names, key=_metric_sort_key)
    # "overall" first, then each task type followed by its question types, for a report that reads top-down.
    ordered_groups = [_OVERALL, *sorted(name for name in groups if name != _OVERALL)]

    summary_groups: dict[str, Any] = {}
    for name in ordered_groups:
        items = groups[name]
        metric_summaries: dict[str, Any] = {}
        for metric in ordered_metrics:
            result = _summarize_metric(
                items,
                metric,
                margin=resolved_margins.get(metric),
                num_resamples=num_resamples,
                confidence=confidence,
                seed=seed,
                min_base_gain=min_base_gain,
            )
            if result is not None:
                metric_summaries[metric] = result
        task_type, question_type = group_keys[name]
        summary_groups[name] = {
            "task_type": task_type,
            "question_type": question_type,
            "num_items": len(items),
            "metrics": metric_summaries,
        }

    return {
        "num_items": len(records),
        "confidence": confidence,
        "num_resamples": num_resamples,
        "seed": seed,
        "min_base_gain": min_base_gain,
        "margins": resolved_margins,
        "metrics": [m for m in ordered_metrics if any(m in g["metrics"] for g in summary_groups.values())],
        "groups": summary_groups,
    }


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _fmt_decision(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")


def markdown_report(summary: Mapping[str, Any]) -> str:
    """Renders a [`summarize`] output as one compact markdown table per metric.

    Columns: group, n, Blind, Base, V2L, Δ (V2L − Base) with its confidence interval, the non-inferiority and
    equivalence decisions at the metric's margin, and the recovered gain. Unavailable values print as "–".

    Args:
        summary (`Mapping[str, Any]`):
            The dict returned by [`summarize`] (or the same dict after a JSON round trip).

    Returns:
        `str`: The markdown text, ending with a newline.
    """
    confidence_pct = f"{100 * summary.get('confidence', 0.95):g}"
    lines: list[str] = []
    for metric in summary["metrics"]:
        margin = summary.get("margins", {}).get(metric)
        margin_text = f" (margin ±{margin:g})" if margin is not None else " (no margin)"
        lines.append(f"### {metric}{margin_text}")
        lines.append("")
        lines.append(
            f"| group | n | Blind | Base | V2L | Δ [{confidence_pct}% CI] | NI | Equiv | recovered gain |"
        )
        lines.append("|---|---:|---:|---:|---:|---|:---:|:---:|---:|")
        for name, group in summary["groups"].items():
            stats = group["metrics"].get(metric)
            if stats is None:
                continue
            means = stats["means"]
            interval = f"{_fmt(stats['delta'], signed=True)} [{_fmt(stats['ci_low'], signed=True)}, " + (
                f"{_fmt(stats['ci_high'], signed=True)}]"
            )
            cells = [
                name,
                str(stats["num_items"]),
                _fmt(means.get("blind")),
                _fmt(means.get("base")),
                _fmt(means.get("v2l")),
                interval,
                _fmt_decision(stats["non_inferior"]),
                _fmt_decision(stats["equivalent"]),
                _fmt(stats["recovered_gain"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Optional LLM judge: the prompt and the parsing of its reply (the model call lives with the CLI)
# ---------------------------------------------------------------------------------------------------------------

JUDGE_PROMPT_TEMPLATE = """\
You are grading an answer about a video. You cannot see the video; judge the candidate answer only against the \
reference answer, which is correct.

Question: {question}
Reference answer: {reference}
Candidate answer: {prediction}

Rate how well the candidate answer matches the reference in meaning, on this scale:
1 = wrong, or unrelated to the reference
2 = mostly wrong, with a small correct part
3 = partly correct, with important details missing or wrong
4 = mostly correct, with minor omissions or errors
5 = fully correct and consistent with the reference

Ignore wording, length and style; judge only the content. Reply with the score alone, as one integer from 1 to 5.
Score:"""

# A range such as "1-5" or "1 to 5" restates the scale; it is never the score and must not be read as one.
_RANGE = re.compile(r"(?<![\d.])\d+\s*(?:-|–|to)\s*\d+(?!\.?\d)", re.IGNORECASE)
# "Score: 4", "rating = 4", "**Score:** 4".
_LABELLED_SCORE = re.compile(r"\b(?:score|rating|grade)\b\W{0,4}(\d+)(?!\.?\d)", re.IGNORECASE)
# "4/5", "4 / 5", "4 out of 5".
_SCORE_OUT_OF_FIVE = re.compile(r"(?<!\d)(?<!\d\.)(\d+)\s*(?:/|out\s+of)\s*5(?!\.?\d)", re.IGNORECASE)
# A whole number, not part of a larger number or a decimal ("4.5" is not a 4).
_INTEGER = re.compile(r"(?<!\d)(?<!\d\.)(\d+)(?!\.?\d)")


def judge_prompt(question: str, reference: str, prediction: str) -> str:
    """Builds the LLM-judge prompt for one answer.

    The judge sees the question, the reference answer and the candidate answer (never the video) and is asked for
    a single integer from 1 to 5:

    - 1 = wrong, or unrelated to the reference;
    - 2 = mostly wrong, with a small correct part;
    - 3 = partly correct, with important details missing or wrong;
    - 4 = mostly correct, with minor omissions or errors;
    - 5 = fully correct and consistent with the reference.

    It is told to ignore wording, length and style, and the prompt ends with "Score:" so that a plain causal LM
    continues with the number. The full text is [`JUDGE_PROMPT_TEMPLATE`]; read the reply with
    [`parse_judge_score`], which rescales it to 0-1.

    Args:
        question (`str`):
            The question asked (for captioning, the captioning instruction).
        reference (`str`):
            The reference answer.
        prediction (`str`):
            The system's answer to grade.

    Returns:
        `str`: The prompt text.
    """
    return JUDGE_PROMPT_TEMPLATE.format(
        question=question.strip(), reference=reference.strip(), prediction=prediction.strip()
    )


def parse_judge_score(text: str) -> float | None:
    """Reads the judge's 1-5 score from its reply and rescales it to [0, 1] as (score − 1) / 4.

    The score is taken, in order of preference, from a labelled score ("Score: 4"), from an "N/5" or "N out of 5"
    form, or from the only whole number in the reply; ranges that restate the scale ("1-5", "1 to 5") are
    ignored. A reply with several unlabelled numbers ("between 3 and 4"),
    a decimal ("4.5") or a number outside 1-5 is treated as unreadable, since guessing would bias the metric.

    Args:
        text (`str`):
            The judge's reply (the continuation after the prompt).

    Returns:
        `float | None`: 0.0, 0.25, 0.5, 0.75 or 1.0, or `None` when no valid score can be read.
    """
    text = _RANGE.sub(" ", text)
    for pattern in (_LABELLED_SCORE, _SCORE_OUT_OF_FIVE):
        match = pattern.search(text)
        if match is not None:
            return _rescale(int(match.group(1)))
    numbers = _INTEGER.findall(text)
    if len(numbers) != 1:
        return None
    return _rescale(int(numbers[0]))


def _rescale(score: int) -> float | None:
    return (score - 1) / 4 if 1 <= score <= 5 else None
