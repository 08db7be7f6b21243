"""The processor's frame settings and SmolVLM2's own rules: sampled indices and the prompt layout are pinned against
transformers' `SmolVLMVideoProcessor` / `SmolVLMProcessor` code (driven directly: no torchvision here, so only the
pixel ops of the real video processor are left out)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from transformers import SmolVLMImageProcessorPil, SmolVLMProcessor
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
from transformers.video_utils import VideoMetadata

from processing_video2lora import Video2LoRAProcessor
from tests.conftest import make_frames
from video2lora.video import sample_indices, sample_video, write_video


def smolvlm_indices(total: int, frame_rate: float, max_frames: int, fps: float) -> list[int]:
    """What SmolVLM2's video processor samples from a clip of `total` frames at `frame_rate`."""
    metadata = VideoMetadata(total_num_frames=total, fps=frame_rate, duration=total / frame_rate)
    video_processor = SimpleNamespace(num_frames=max_frames, fps=fps)
    return SmolVLMVideoProcessor.sample_frames(video_processor, metadata).tolist()


@pytest.mark.parametrize(("total", "frame_rate", "max_frames", "fps"), [
    (20, 8.0, 64, 1.0), (300, 30.0, 64, 1.0), (3000, 30.0, 64, 1.0), (3000, 30.0, 12, 1.0), (90, 29.97, 12, 2.0),
    (5, 30.0, 64, 1.0), (1, 24.0, 64, 1.0), (24 * 600, 24.0, 64, 1.0), (100, 25.0, 8, 0.5),
])
def test_fps_rule_gives_smolvlm2_indices(total, frame_rate, max_frames, fps):
    assert sample_indices(total, frame_rate, num_frames=max_frames, fps=fps) == smolvlm_indices(
        total, frame_rate, max_frames, fps)


def test_a_file_gives_smolvlm2_frames_and_timestamps(tmp_path):
    path = tmp_path / "clip.mp4"
    frames = np.full((40, 16, 16, 3), 100, dtype=np.uint8)
    frames[..., 2] = (np.arange(40) * 6 + 10)[:, None, None]  # the blue level names the frame
    write_video(path, frames, fps=8.0)
    video = sample_video(path, num_frames=64, fps=1.0, max_edge=None)
    expected = smolvlm_indices(40, 8.0, 64, 1.0)
    assert [round((frame[..., 2].mean() - 10) / 6) for frame in video.frames] == expected
    # SmolVLM2's timestamps are `index / fps` (`VideoMetadata.timestamps`); the file's own are the same at 8 fps.
    assert video.timestamps == pytest.approx([index / 8.0 for index in expected])


def test_prompt_layout_is_smolvlm2s(processor):
    """The expanded prompt of sampled frames equals SmolVLMProcessor's for the same metadata."""
    indices = smolvlm_indices(300, 30.0, 64, 1.0)
    stamps = [index / 30.0 for index in indices]
    ours = processor.video_prompt(len(indices), stamps, duration=10.0)
    metadata = VideoMetadata(total_num_frames=300, fps=30.0, duration=10.0, frames_indices=indices)
    pixels = np.empty((1, len(indices), 0), dtype=np.uint8)
    theirs = SmolVLMProcessor.replace_video_token(processor, {"pixel_values": pixels, "video_metadata": [metadata]}, 0)
    assert ours == theirs and ours.count("<image>") == len(indices) * processor.image_seq_len


def test_every_door_samples_with_the_processor_settings(processor, tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, make_frames(20, size=96), fps=8.0)
    video = processor.sample_video(path)
    assert video.num_frames == processor.video_sampling["max_frames"] == 4
    assert max(video.frames.shape[1:3]) == processor.frame_size == 64  # the vision tower's size, not a guess
    assert processor.sample_video(video) is video  # already sampled: kept as is
    assert processor.sample_video(path, num_frames=2).num_frames == 2


def test_real_base_folder_gets_smolvlm2_sampling_and_resolution(processor, tmp_path):
    """A SmolVLM2-500M-style folder: 512 px tower, `video_sampling` in video_preprocessor_config.json."""
    image_processor = SmolVLMImageProcessorPil(do_image_splitting=False, size={"longest_edge": 2048},
                                               max_image_size={"longest_edge": 512})
    base = Video2LoRAProcessor(image_processor, processor.tokenizer, image_seq_len=64)
    base.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    config.pop("video_sampling")  # SmolVLM2's own processor_config.json has none
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"video_sampling": {"fps": 2, "max_frames": 32, "video_size": {"longest_edge": 512}}}))
    loaded = Video2LoRAProcessor.from_pretrained(tmp_path)
    assert loaded.frame_size == 512
    assert loaded.video_sampling == {"fps": 2, "max_frames": 32, "skip_secs": 1.0}
    # The recipe's cap overrides it and is saved with the hypernetwork's processor.
    loaded.update_video_sampling(max_frames=12)
    loaded.save_pretrained(tmp_path / "saved")
    assert Video2LoRAProcessor.from_pretrained(tmp_path / "saved").video_sampling["max_frames"] == 12
    with pytest.raises(ValueError, match="num_frames"):
        loaded.update_video_sampling(max_frames=0)


def test_chat_template_without_a_video_branch_is_refused(processor):
    text_only = "{% for m in messages %}{{ m['content'][-1]['text'] }}{% endfor %}Assistant:"
    broken = Video2LoRAProcessor(processor.image_processor, processor.tokenizer,
                                 image_seq_len=processor.image_seq_len, chat_template=text_only)
    with pytest.raises(ValueError, match="writes no '<video>'.*DEFAULT_CHAT_TEMPLATE"):
        broken.encode_videos([make_frames(2)], "describe")


def test_one_file_gives_one_adapter_through_every_door(make_model, tmp_path, capsys):
    """The Python API, the CLI, the teacher, the trainer's data and the evaluation sample a file identically, so
    its adapter is the same bit for bit whichever door it came in by."""
    import torch

    import train_hf
    from modeling_video2lora import Video2LoRAAdapter
    from tests.conftest import perturb_
    from video2lora import cli, runner, teacher

    model = make_model()
    perturb_(model)
    model.save_pretrained(tmp_path / "model")
    path = tmp_path / "clip.mp4"
    write_video(path, make_frames(24, size=96), fps=8.0)  # larger than the tower: every door must resize alike

    python_door = model.processor.sample_video(path)
    doors = {
        "evaluation": runner.read_row_video(model, {"video_path": str(path)}),
        "teacher": teacher._load_video({"video_path": str(path)}, {}, model.processor, num_frames=None),
    }
    table = train_hf.decode_videos([(str(path), None, None)], sampling=model.processor.sampling_kwargs(),
                                   cache_dir=str(tmp_path / "frames"))
    record = table[0]
    doors["trainer"] = np.frombuffer(record["frames"], dtype=np.uint8).reshape(record["shape"])
    for name, video in doors.items():
        frames = video if isinstance(video, np.ndarray) else video.frames
        np.testing.assert_array_equal(frames, python_door.frames, err_msg=name)
        if not isinstance(video, np.ndarray):
            assert video.timestamps == python_door.timestamps, name
    assert record["timestamps"] == python_door.timestamps

    assert cli.main(["internalize", str(path), "-o", str(tmp_path / "adapter"), "--model", str(tmp_path / "model"),
                     "--dtype", "float32"]) == 0
    from_cli = Video2LoRAAdapter.from_pretrained(tmp_path / "adapter")
    from_python = model.internalize(path)
    for name in from_python.lora_A:
        assert torch.equal(from_cli.lora_A[name], from_python.lora_A[name])
        assert torch.equal(from_cli.scaled_B()[name], from_python.scaled_B()[name])
