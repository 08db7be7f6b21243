#!/usr/bin/env bash
# Retrain the embedded default from scratch on CPU: the tiny SmolVLM teacher, then the Video2LoRA hypernetwork.
# Every step resumes where it stopped when rerun (world rendering is deterministic by seed, the teacher and both
# trainings checkpoint atomically). Wall time on 2 shared CPU cores: see README.md, "The embedded default".
#
#   bash scripts/train_embedded_default.sh            # both steps
#   SKIP_BASE=1 bash scripts/train_embedded_default.sh  # only the hypernetwork, on video2lora/checkpoints/smolvlm-world
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
DATA=${DATA:-data/world}
RUNS=${RUNS:-runs}
BASE=video2lora/checkpoints/smolvlm-world
V2L=video2lora/checkpoints/video2lora-world

# 1. The frozen base and teacher: a tiny SmolVLM trained from scratch on in-memory world clips (docs/design.md §8).
#    BASE_DEVICE=cuda trains it on a GPU when there is one (same recipe; the wall-time budget then buys ~25x the steps).
if [ -z "${SKIP_BASE:-}" ]; then
  resume=(); [ -d "$RUNS/base/last-checkpoint" ] && resume=(--resume)
  python -m video2lora.base_training --output_dir "$RUNS/base" --minutes "${BASE_MINUTES:-180}" \
    --export "$BASE" --eval_test --device "${BASE_DEVICE:-cpu}" "${resume[@]}"
fi

# 2. World clips on disk, as a user's data would be: MP4 files plus docs/design.md §5 manifests.
#    Order questions ("what appears first, ...?") are asked of a third of the clips and are the hardest type to
#    internalize, so ORDER_CLIPS more training clips come from the seeds that follow, keeping only clips asked one.
TRAIN_CLIPS=${TRAIN_CLIPS:-18000}
[ -f "$DATA/train.jsonl" ] || python -m video2lora.world --out "$DATA" --split train --num-clips "$TRAIN_CLIPS" \
  --no-progress
ORDER_CLIPS=${ORDER_CLIPS:-9000}
if [ "$ORDER_CLIPS" -gt 0 ]; then
  [ -f "$DATA/train_order.jsonl" ] || python -m video2lora.world --out "$DATA" --split train \
    --num-clips "$ORDER_CLIPS" --seed-offset "$TRAIN_CLIPS" --require-question-type order \
    --manifest-name train_order.jsonl --no-progress
  cat "$DATA/train.jsonl" "$DATA/train_order.jsonl" > "$DATA/train_all.jsonl"
else
  cp "$DATA/train.jsonl" "$DATA/train_all.jsonl"
fi
#    Composition in the loop (docs/design.md §5): two-segment clips whose whole-clip rows the student answers from its
#    halves' (or quarters') adapters composed, as `internalize(segments=k)` composes them at inference.
TWO_SEGMENT_CLIPS=${TWO_SEGMENT_CLIPS:-3000}
if [ "$TWO_SEGMENT_CLIPS" -gt 0 ]; then
  [ -f "$DATA/train_two_segment.jsonl" ] || python -m video2lora.world --out "$DATA" --split train \
    --num-clips "$TWO_SEGMENT_CLIPS" --two-segment --no-progress
  python scripts/composition_rows.py --whole "$DATA/train_two_segment.jsonl" > "$DATA/train_two_segment_whole.jsonl"
fi
[ -f "$DATA/test.jsonl" ] || python -m video2lora.world --out "$DATA" --split test --num-clips 400 --no-progress
[ -f "$DATA/test_two_segment.jsonl" ] || python -m video2lora.world --out "$DATA" --split test --num-clips 400 \
  --two-segment --no-progress

# 3. Teacher targets: the base's own greedy answers with the video in context, and its top-8 log-probs per answer
#    token for the KL term of step 4.
# One single-threaded process per core: tiny models spend more time in thread hand-offs than in matmuls.
NPROC=${NPROC:-$(nproc)}
OMP_NUM_THREADS=1 torchrun --nproc_per_node "$NPROC" -m video2lora.teacher --model "$BASE" \
  --manifest "$DATA/train_all.jsonl" --output "$DATA/train_teacher.jsonl" --num_frames 4 \
  --batch_size 64 --top_k_logprobs 8
cp "$DATA/train_teacher.jsonl" "$DATA/train_compose_teacher.jsonl"
if [ "$TWO_SEGMENT_CLIPS" -gt 0 ]; then
  # The teacher reads the whole two-segment clip with 8 frames (what Base reads in the composition evaluation); the
  # student reads it as 2 segments of 4 frames, and every other clip also as 4 segments of 2 steps.
  OMP_NUM_THREADS=1 torchrun --nproc_per_node "$NPROC" -m video2lora.teacher --model "$BASE" \
    --manifest "$DATA/train_two_segment_whole.jsonl" --output "$DATA/train_two_segment_teacher.jsonl" \
    --num_frames 8 --batch_size 64 --top_k_logprobs 8
  python scripts/composition_rows.py "$DATA/train_two_segment_teacher.jsonl" >> "$DATA/train_compose_teacher.jsonl"
fi

# 4. The hypernetwork (docs/design.md §8: 16 latents of width 128, 2 blocks, rank 8, per-layer heads), 8 videos a step,
#    cross-entropy on the teacher's answers plus KL to its top-8. The context carries its token positions
#    (--use_context_positions): cross-attention alone cannot tell the first frame from the last. INIT_FROM=<a
#    Video2LoRA folder> continues that hypernetwork instead of starting from scratch, e.g. after the base was trained
#    further; positions are added to it if it had none (a no-op until they train). Order questions are the hardest to
#    internalize (which event came first) and, even with the order clips of step 2, 5.6% of the rows (3.6% without),
#    so their tokens count 4x (QUESTION_TYPE_WEIGHTS).
resume=(); ls -d "$RUNS/video2lora"/checkpoint-* >/dev/null 2>&1 && resume=(--resume_from_checkpoint last)
if [ -n "${INIT_FROM:-}" ]; then
  model=(--init_from "$INIT_FROM" --use_context_positions true)
else
  model=(--base_model_name_or_path "$BASE" --use_context_positions true
         --lora_r 8 --latent_size 128 --num_latents 16 --num_blocks 2 --num_attention_heads 4)
fi
OMP_NUM_THREADS=1 torchrun --nproc_per_node "$NPROC" train_hf.py "${model[@]}" --base_model_reference ../smolvlm-world \
  --train_manifest "$DATA/train_compose_teacher.jsonl" --data_root "$DATA" --output_dir "$RUNS/video2lora" \
  --preprocessing_num_workers "$NPROC" --num_frames 4 --questions_per_video 16 \
  --per_device_train_batch_size $((8 / NPROC)) --kl_weight "${KL_WEIGHT:-1.0}" \
  --question_type_weights "${QUESTION_TYPE_WEIGHTS-order=4}" --max_steps "${MAX_STEPS:-3000}" \
  --learning_rate "${LEARNING_RATE:-1e-3}" --logging_steps 25 --save_strategy steps --save_steps 200 \
  --save_total_limit 2 --report_to none "${resume[@]}"

# 4b. Composition (README, "Long videos"): continue it in three stages (7,000 steps) with segments composed in latent
#     space and told their place, the last adding the sweep's harder scenes, on clips of its own (DATA_COMPOSE);
#     SKIP_COMPOSE=1 ships step 4's hypernetwork instead.
FINAL="$RUNS/video2lora"
if [ -z "${SKIP_COMPOSE:-}" ]; then
  DATA="${DATA_COMPOSE:-$DATA-compose}" INIT="$RUNS/video2lora" OUT="$RUNS/compose" bash scripts/compose_finetune.sh
  FINAL="$RUNS/compose"
fi

# 5. Ship the final hypernetwork beside its base (weights, config, processor files, custom code; no pickles).
mkdir -p "$V2L"
for f in config.json model.safetensors processor_config.json tokenizer.json tokenizer_config.json \
         chat_template.jinja configuration_video2lora.py modeling_video2lora.py perceiver_video2lora.py \
         processing_video2lora.py video_processing_video2lora.py families_video2lora.py; do
  cp "$FINAL/$f" "$V2L/$f"
done

# 6. Quality on held-out clips (docs/design.md §6): Base vs Video2LoRA vs Blind.
python -m video2lora.cli eval --manifest "$DATA/test.jsonl" --model "$V2L" --output_dir "$V2L/eval" --overwrite

# 7. Composition (docs/design.md §1, step 5): two-segment clips read as 2 (and 4) segments of 4 frames composed the
#    model's way, against Base reading the whole clip (8 or 16 frames) and against Blind.
for segments in 2 4; do
  python -m video2lora.cli eval --manifest "$DATA/test_two_segment.jsonl" --where segment=whole \
    --segments "$segments" --num_frames 4 --model "$V2L" --output_dir "$V2L/eval-compose-$segments" --overwrite
done

# 8. The hypernetwork's model card (video2lora/hub_cards/hypernetwork.md), with the held-out numbers of step 6.
python - "$V2L" "$FINAL" "${INIT_FROM:-}" "${KL_WEIGHT:-1.0}" "$DATA/train_compose_teacher.jsonl" <<'PY'
import json, sys, tempfile
from pathlib import Path

from modeling_video2lora import Video2LoRAModel
from train_hf import prepare_hub_folder

v2l, run, init_from, kl_weight = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(sys.argv[5]) as rows:
    num_clips = len({json.loads(row)["video_path"] for row in rows})
em = json.loads((v2l / "eval" / "summary.json").read_text())["groups"]["qa"]["metrics"]["exact_match"]
state = json.loads((run / "trainer_state.json").read_text())
loss = next(entry["loss"] for entry in reversed(state["log_history"]) if "loss" in entry)
start = f", continuing the hypernetwork in {init_from}" if init_from else ""
model = Video2LoRAModel.from_pretrained(v2l)
positions = " with context positions" if model.config.use_context_positions else ""
if model.config.segment_composition == "latents":
    positions += (", as scripts/compose_finetune.sh's composition fine-tune (segments composed in latent space and "
                  "told their place) of the hypernetwork the script trained first")
summary = (f"Trained with scripts/train_embedded_default.sh: {state['global_step']:,} steps of 8 videos{positions}{start} on the "
           f"cached answers of video2lora/checkpoints/smolvlm-world over {num_clips:,} world clips (cross-entropy plus {kl_weight} x KL to "
           f"the teacher's top-8 log-probs); final training loss {loss:.2f}. Held-out "
           f"quality: eval/report.md (V2L {em['means']['v2l']:.3f} vs Base {em['means']['base']:.3f} exact match on "
           f"{em['num_items']:,} test questions, Blind {em['means']['blind']:.3f}). It and its base know only the "
           "project's generated world of coloured shapes: asked about a real video, they answer confidently and "
           "wrongly. For real videos, train on a real base (docs/training.md).")
with tempfile.TemporaryDirectory() as folder:
    prepare_hub_folder(model, Path(folder) / "card", repo_id="video2lora-world", base_model_reference="../smolvlm-world",
                       training_summary=summary)
    (v2l / "README.md").write_text((Path(folder) / "card" / "README.md").read_text())
PY
