"""`pipeline("video-to-lora", ...)`: the custom pipeline registered in the checkpoint's config, run offline from a
foreign working directory with this project's own modules out of reach (only the checkpoint's Hub files run)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from tests.test_modeling import AUTOMODEL_SCRIPT
from video2lora.video import write_video
from video2lora.world import generate_clip, split_seeds

EMBEDDED = Path(__file__).resolve().parents[1] / "video2lora" / "checkpoints" / "video2lora-world"

PIPELINE_SCRIPT = AUTOMODEL_SCRIPT.split("import torch")[0] + textwrap.dedent("""
    import torch
    from transformers import pipeline

    video_to_lora = pipeline("video-to-lora", model=sys.argv[1], trust_remote_code=True)
    assert type(video_to_lora).__module__.startswith("transformers_modules."), type(video_to_lora).__module__
    only_adapter = video_to_lora(sys.argv[2])
    answered = video_to_lora(sys.argv[2], question=["how many objects are there?", "what shape is the object?"])
    assert set(only_adapter) == {"adapter"}
    torch.save({"lora_A": only_adapter["adapter"].lora_A["mlp.down_proj"], "answers": answered["answer"]}, sys.argv[3])
""")


def test_pipeline_returns_an_adapter_and_answers_offline_from_anywhere(tmp_path):
    assert json.loads((EMBEDDED / "config.json").read_text())["custom_pipelines"]["video-to-lora"]["impl"] == (
        "pipeline_video2lora.Video2LoRAPipeline")
    clip = generate_clip(split_seeds("test", 1, offset=3)[0])
    video = tmp_path / "clip.mp4"
    write_video(video, clip.frames, fps=clip.fps)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    # One thread as in this process (conftest): a matmul split over another number of threads rounds differently.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(EMBEDDED), str(video), str(tmp_path / "o.pt")],
                            cwd=workdir, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "o.pt", weights_only=True)

    from video2lora.runner import load_model

    model = load_model(EMBEDDED)
    expected = model.internalize(video)
    assert torch.equal(out["lora_A"], expected.lora_A["mlp.down_proj"])  # the same door as every other
    assert out["answers"] == model.answer(expected, ["how many objects are there?", "what shape is the object?"])
