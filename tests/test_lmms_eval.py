"""lmms-eval scores the embedded default on a tiny local task (three held-out world clips) exactly as `video2lora eval`
does: the same answers, row by row, in both modes, with V2L reading no visual token.

lmms-eval is optional (pyproject's `lmms` extra plus `pip install --no-deps lmms-eval==0.7.3`, docs/training.md,
"Scoring with lmms-eval"); without it these tests skip.
"""

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

if importlib.util.find_spec("lmms_eval") is None:
    pytest.skip("lmms-eval is not installed: pip install --no-deps lmms-eval==0.7.3 && pip install -e '.[lmms]'",
                allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
TASKS_DIR = REPO / "video2lora" / "lmms_eval_tasks"
TASK = "video2lora_world"
# Clips 373-375 of the test split: the embedded default misses two questions with the adapter and none with the video
# (its eval/records.jsonl), so the two modes score differently and a mix-up between them cannot pass.
WORLD = ["--split", "test", "--seed-offset", "373", "--num-clips", "3", "--no-progress"]
BATCH_SIZE = "16"  # `video2lora eval`'s default: the same batches give the same greedy answers
MODES = ("v2l", "base")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# The three processes run side by side with one thread each: oversubscribed cores made them 2.5x slower. All three
# use the same setting, so their arithmetic, and so their greedy answers, can agree exactly.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _declared_entry_point() -> str:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return "video2lora.lmms_eval:model_manifest"
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["entry-points"]["lmms_eval.models"]["video2lora"]


def _entry_point_dir(tmp: Path) -> Path | None:
    """lmms-eval finds `--model video2lora` through installed metadata. An install from an older checkout (or none:
    the tests run from the source tree) lacks it; then a stand-in distribution declaring pyproject's entry point
    goes on the subprocesses' path, so that lmms-eval's own loader still resolves it."""
    declared = _declared_entry_point()
    installed = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "video2lora"]
    if installed:
        assert installed[0].value == declared, "reinstall the project: its lmms_eval.models entry point is stale"
        return None
    info = tmp / "video2lora_lmms_entry_point-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: video2lora-lmms-entry-point\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[lmms_eval.models]\nvideo2lora = {declared}\n")
    return tmp


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The world clips, then `video2lora eval` and lmms-eval in both modes, run side by side."""
    root = tmp_path_factory.mktemp("lmms")
    data = root / "world"
    env = {**os.environ, **OFFLINE, **THREADS, "HF_DATASETS_CACHE": str(root / "datasets-cache")}
    env.pop("VIDEO2LORA_DATA_ROOT", None)
    paths = [str(REPO), env.get("PYTHONPATH", "")]
    stand_in = _entry_point_dir(root / "entry-point")
    if stand_in is not None:
        paths.insert(0, str(stand_in))
    env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    subprocess.run([sys.executable, "-m", "video2lora.world", "--out", str(data), *WORLD], check=True, env=env,
                   cwd=REPO, capture_output=True, timeout=120)

    runs = {"project": subprocess.Popen(
        [sys.executable, "-m", "video2lora.cli", "eval", "--manifest", str(data / "test.jsonl"), "--where",
         "task_type=qa", "--batch_size", BATCH_SIZE, "--num_resamples", "100", "--output_dir", str(root / "eval")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)}
    for mode in MODES:
        # lmms-eval's own command line, run from the data folder: the task reads test.jsonl from there.
        runs[mode] = subprocess.Popen(
            [sys.executable, "-m", "lmms_eval", "--model", "video2lora", "--model_args", f"mode={mode}",
             "--tasks", TASK, "--include_path", str(TASKS_DIR), "--batch_size", BATCH_SIZE,
             "--output_path", str(root / f"lmms-{mode}"), "--log_samples", "--verbosity", "WARNING"],
            cwd=data, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, run in runs.items():
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name} failed:\n{output[-4000:]}"

    records = [json.loads(line) for line in (root / "eval" / "records.jsonl").read_text().splitlines()]
    summary = json.loads((root / "eval" / "summary.json").read_text())
    lmms = {}
    for mode in MODES:
        (results,) = (root / f"lmms-{mode}").rglob("*_results.json")
        (samples,) = (root / f"lmms-{mode}").rglob(f"*_samples_{TASK}.jsonl")
        rows = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda row: row["doc_id"])
        lmms[mode] = {"results": json.loads(results.read_text())["results"][TASK], "samples": rows}
    return {"records": records, "summary": summary, "lmms": lmms, "data": data}


@pytest.mark.parametrize("mode", MODES)
def test_lmms_eval_answers_and_scores_as_video2lora_eval(scored, mode):
    records, lmms = scored["records"], scored["lmms"][mode]
    answers = [(sample["input"], _text(sample["filtered_resps"])) for sample in lmms["samples"]]
    assert answers == [(record["prompt"], record["answers"][mode]) for record in records]
    means = scored["summary"]["groups"]["overall"]["metrics"]
    for metric in ("exact_match", "token_f1"):
        assert lmms["results"][f"{metric},none"] == pytest.approx(means[metric]["means"][mode], abs=1e-12)


def test_the_two_modes_differ_on_this_task(scored):
    """Otherwise the row-by-row comparison above could not tell a V2L run from a Base run."""
    means = scored["summary"]["groups"]["overall"]["metrics"]["exact_match"]["means"]
    assert means["v2l"] < means["base"]
    v2l, base = ([_text(sample["filtered_resps"]) for sample in scored["lmms"][mode]["samples"]] for mode in MODES)
    assert v2l != base


def test_v2l_reads_no_visual_token(scored, model):
    processor = model.model.processor
    visual = {record["visual_tokens"]["base"] for record in scored["records"]}
    assert visual and min(visual) > 0  # Base pays for the frames ...
    for v2l, base in zip(*(scored["lmms"][mode]["samples"] for mode in MODES), strict=True):
        prompt = processor.tokenizer(processor.chat_prompt(v2l["input"], with_video=False))["input_ids"]
        assert processor.image_token_id not in prompt
        # ... V2L's whole context is the text-only question, Base's the same plus the frames' tokens.
        assert v2l["token_counts"] == [{"input_tokens": len(prompt)}]
        assert base["token_counts"][0]["input_tokens"] >= len(prompt) + max(visual)


def _text(response) -> str:
    return response[0] if isinstance(response, list) else response


@pytest.fixture(scope="module")
def model():
    from video2lora.lmms_eval import Video2LoRASimple

    return Video2LoRASimple(mode="v2l", batch_size=BATCH_SIZE)


def test_loglikelihood_agrees_with_the_greedy_answers(scored, model):
    """The answer each mode generated is the continuation it finds greedy; a wrong one scores lower and is not."""
    from lmms_eval.api.instance import Instance

    records = scored["records"][:3]
    model.task_dict = {TASK: {"test": records}}

    def doc_to_visual(doc: dict) -> list[str]:
        return [str(scored["data"] / doc["video_path"])]  # records name videos relative to the data folder

    def request(index: int, continuation: str) -> Instance:
        return Instance(request_type="loglikelihood", idx=0, metadata={"task": TASK, "doc_id": index, "repeats": 1},
                        arguments=(records[index]["prompt"], continuation, doc_to_visual, index, TASK, "test"))

    for mode in MODES:
        model.mode = mode
        requests = [request(i, f" {record['answers'][mode]}") for i, record in enumerate(records)]
        requests += [request(i, " purple") for i in range(len(records))]
        results = model.loglikelihood(requests)
        right, wrong = results[: len(records)], results[len(records) :]
        assert all(greedy for _, greedy in right), (mode, right)
        assert not any(greedy for _, greedy in wrong), (mode, wrong)
        assert all(r[0] > w[0] for r, w in zip(right, wrong, strict=True)), (mode, right, wrong)
    model.mode = "v2l"


def test_stop_sequences_cut_the_answer():
    from video2lora.lmms_eval import _truncate

    assert _truncate("left. then up", ["."]) == "left"
    assert _truncate("left\n\nup", ["\n\n", "x"]) == "left"
    assert _truncate(" left ", []) == "left"
