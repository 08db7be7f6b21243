"""Captions and question-answer pairs for scenes of the generated video world.

Text is lower-case, templated and made of a few dozen words, so that a tiny word-level tokenizer can learn it.
Answers are single words, scored by exact match.

Captions state what happens in temporal order, one sentence each: first every object on screen at the start
(left to right), then each event:

    "a red circle moves left. a blue square stays still. a green cross appears and moves up. the red circle
    turns yellow."

Questions, by `question_type` (answer vocabulary in brackets):

- `colour`: "what colour is the square?" ([`COLOURS`]); for an object that changes colour, "what colour is the
  square at first?".
- `shape`: "what shape is the blue object?" ([`SHAPES`]); not asked about an object that changes colour.
- `count`: "how many objects are there?" when the set of objects never changes, else "how many objects are there
  at the start?" and "... at the end?" ([`COUNT_WORDS`], spelled out).
- `direction`: "which way does the red object move?" or "which way does the circle move?" ([`DIRECTIONS`]:
  left, right, up, down, still).
- `order`: "what appears first, the square or the circle?" (one object appears later), "what disappears first,
  the square or the circle?" (one object disappears) and, with two or more events, "what happens first, the
  square appears or the circle changes colour?" ([`SHAPES`]). These are two-way choices: both options are named,
  in random order, so a blind guess scores 50%.
- `colour_change`: "what colour does the circle turn?" ([`COLOURS`]) and "which object changes colour?"
  ([`SHAPES`]).

Objects are always named by an attribute unique in the clip (shapes and colours are never shared within a
scene) and never by an attribute that is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .scene import COLOURS, DIRECTIONS, SHAPES, Scene, WorldObject

__all__ = [
    "CAPTION_PROMPT",
    "COUNT_WORDS",
    "QUESTION_TYPES",
    "QAItem",
    "ask",
    "ask_two_segment",
    "describe",
]

CAPTION_PROMPT = "Describe the video."
QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "direction", "order", "colour_change")
# Counts are spelled out so that every answer in the world is a word.
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")

WHICH_CHANGES_COLOUR = "which object changes colour?"
_EVENT_VERBS = {"appear": "appears", "disappear": "disappears", "colour_change": "changes colour"}


@dataclass(frozen=True)
class QAItem:
    """One question about a clip.

    Args:
        question (`str`): The question text.
        answer (`str`): The one-word reference answer.
        question_type (`str`): One of [`QUESTION_TYPES`].
        objects (`tuple[int, ...]`): Indices of the objects the question is about, so that a caller packing several
            questions into one sequence can avoid pairing questions that give each other away (docs/design.md §8).
    """

    question: str
    answer: str
    question_type: str
    objects: tuple[int, ...] = ()

    def as_tuple(self) -> tuple[str, str, str]:
        """`(question, answer, question_type)`."""
        return self.question, self.answer, self.question_type


def _direction_phrase(obj: WorldObject) -> str:
    return "stays still" if obj.direction == 0 else f"moves {DIRECTIONS[obj.direction]}"


def describe(scene: Scene) -> str:
    """Caption a scene: one sentence per object on screen at the start (left to right), then one per event.

    Args:
        scene (`Scene`): The scene.

    Returns:
        `str`: The caption, e.g. "a red circle moves left. the red circle turns green."
    """
    objects = scene.objects
    # Left to right at the start, so that the caption is a function of the video and not of sampling order.
    initial = sorted((i for i, obj in enumerate(objects) if obj.visible[0]), key=lambda i: objects[i].start[0])
    sentences = [
        f"a {COLOURS[objects[i].colours[0]]} {SHAPES[objects[i].shape]} {_direction_phrase(objects[i])}."
        for i in initial
    ]
    for event in scene.events:
        obj = objects[event.object_index]
        shape = SHAPES[obj.shape]
        if event.kind == "appear":
            sentences.append(f"a {COLOURS[obj.colours[event.step]]} {shape} appears and {_direction_phrase(obj)}.")
        elif event.kind == "disappear":
            sentences.append(f"the {COLOURS[obj.colours[event.step - 1]]} {shape} disappears.")
        else:
            sentences.append(f"the {COLOURS[obj.colours[event.step - 1]]} {shape} turns {COLOURS[event.colour]}.")
    return " ".join(sentences)


def _reference(obj: WorldObject, rng: np.random.Generator) -> str:
    """Name an object by its shape or its colour, both unique in the scene.

    An object that changes colour is only named by its shape: "the red object" would be ambiguous about time.
    """
    if obj.changes_colour or rng.random() < 0.5:
        return f"the {SHAPES[obj.shape]}"
    return f"the {COLOURS[obj.colour]} object"


def _two_way(
    rng: np.random.Generator, template: str, answer_option: str, other_option: str, answer: str
) -> tuple[str, str]:
    """Fill a two-option template with the options in random order, so position gives nothing away."""
    options = [answer_option, other_option]
    if rng.random() < 0.5:
        options.reverse()
    return template.format(*options), answer


def _count_questions(scene: Scene) -> list[QAItem]:
    visible = np.array([obj.visible for obj in scene.objects])
    everyone = tuple(range(len(scene.objects)))
    if visible.all():
        return [QAItem("how many objects are there?", COUNT_WORDS[len(scene.objects)], "count", everyone)]
    # The number on screen changes, so the question must say when.
    return [
        QAItem("how many objects are there at the start?", COUNT_WORDS[int(visible[:, 0].sum())], "count", everyone),
        QAItem("how many objects are there at the end?", COUNT_WORDS[int(visible[:, -1].sum())], "count", everyone),
    ]


def _order_questions(scene: Scene, rng: np.random.Generator) -> list[QAItem]:
    objects, items = scene.objects, []
    for event in scene.events:
        subject = objects[event.object_index]
        if event.kind == "appear":
            # Compare with an object already on screen: it appeared first.
            earlier = [i for i, obj in enumerate(objects) if obj.first_step < subject.first_step]
            other = earlier[int(rng.integers(len(earlier)))]
            answer = SHAPES[objects[other].shape]
            question, answer = _two_way(
                rng, "what appears first, the {} or the {}?", answer, SHAPES[subject.shape], answer
            )
            items.append(QAItem(question, answer, "order", (other, event.object_index)))
        elif event.kind == "disappear":
            # Compare with an object still on screen after this one is gone.
            later = [i for i, obj in enumerate(objects) if obj.last_step > subject.last_step]
            other = later[int(rng.integers(len(later)))]
            answer = SHAPES[subject.shape]
            question, answer = _two_way(
                rng, "what disappears first, the {} or the {}?", answer, SHAPES[objects[other].shape], answer
            )
            items.append(QAItem(question, answer, "order", (event.object_index, other)))
    # Events are sorted by step and happen at distinct steps, so every pair has a strict order.
    for position, first in enumerate(scene.events):
        for second in scene.events[position + 1 :]:
            first_phrase = f"{SHAPES[objects[first.object_index].shape]} {_EVENT_VERBS[first.kind]}"
            second_phrase = f"{SHAPES[objects[second.object_index].shape]} {_EVENT_VERBS[second.kind]}"
            question, answer = _two_way(
                rng,
                "what happens first, the {} or the {}?",
                first_phrase,
                second_phrase,
                SHAPES[objects[first.object_index].shape],
            )
            items.append(QAItem(question, answer, "order", (first.object_index, second.object_index)))
    return items


def ask(scene: Scene, rng: np.random.Generator) -> list[QAItem]:
    """Every question that applies to a scene, grouped by type in [`QUESTION_TYPES`] order.

    Colour, shape and direction are asked about every object they apply to, count once (or at the start and at
    the end), order once per appear or disappear event and once per pair of events, colour change once per change.

    Args:
        scene (`Scene`): The scene.
        rng (`np.random.Generator`): Chooses how objects are named and the order of two-way options.

    Returns:
        `list[QAItem]`: The questions with their answers.
    """
    objects = scene.objects
    colour_items, shape_items, direction_items = [], [], []
    for i, obj in enumerate(objects):
        shape = SHAPES[obj.shape]
        if obj.changes_colour:
            colour_items.append(QAItem(f"what colour is the {shape} at first?", COLOURS[obj.colour], "colour", (i,)))
        else:
            colour_items.append(QAItem(f"what colour is the {shape}?", COLOURS[obj.colour], "colour", (i,)))
            shape_items.append(QAItem(f"what shape is the {COLOURS[obj.colour]} object?", shape, "shape", (i,)))
        direction_items.append(
            QAItem(f"which way does {_reference(obj, rng)} move?", DIRECTIONS[obj.direction], "direction", (i,))
        )

    change_items = []
    changes = [event for event in scene.events if event.kind == "colour_change"]
    for event in changes:
        shape = SHAPES[objects[event.object_index].shape]
        change_items.append(
            QAItem(
                f"what colour does the {shape} turn?", COLOURS[event.colour], "colour_change", (event.object_index,)
            )
        )
    if len(changes) == 1:
        event = changes[0]
        change_items.append(
            QAItem(
                WHICH_CHANGES_COLOUR, SHAPES[objects[event.object_index].shape], "colour_change", (event.object_index,)
            )
        )

    return (
        colour_items
        + shape_items
        + _count_questions(scene)
        + direction_items
        + _order_questions(scene, rng)
        + change_items
    )


def ask_two_segment(
    first: Scene, first_items: list[QAItem], second: Scene, second_items: list[QAItem]
) -> list[QAItem]:
    """Questions about a whole two-segment clip, each answerable from one half.

    The halves use disjoint shapes and colours, so every half question still names its object unambiguously in the
    whole clip and keeps its answer. Two kinds need rewording: counts (the number on screen changes at the cut, so
    the whole clip asks for the start, which is in the first half, and the end, which is in the second), and
    "which object changes colour?", dropped when both halves have a change.

    Args:
        first (`Scene`): The first half.
        first_items (`list[QAItem]`): Its questions, from [`ask`].
        second (`Scene`): The second half.
        second_items (`list[QAItem]`): Its questions; their object indices are shifted past the first half's.

    Returns:
        `list[QAItem]`: The whole clip's questions, the first half's before the second's.
    """
    offset = len(first.objects)
    shifted = [replace(item, objects=tuple(i + offset for i in item.objects)) for item in second_items]
    changes = sum(item.question == WHICH_CHANGES_COLOUR for item in first_items + second_items)
    kept = [
        item
        for item in first_items + shifted
        if item.question_type != "count" and (item.question != WHICH_CHANGES_COLOUR or changes == 1)
    ]
    everyone = tuple(range(offset + len(second.objects)))
    at_start = sum(obj.visible[0] for obj in first.objects)
    at_end = sum(obj.visible[-1] for obj in second.objects)
    counts = [
        QAItem("how many objects are there at the start?", COUNT_WORDS[at_start], "count", everyone),
        QAItem("how many objects are there at the end?", COUNT_WORDS[at_end], "count", everyone),
    ]
    return kept + counts
