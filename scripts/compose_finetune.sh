#!/usr/bin/env bash
# Composition fine-tune of the embedded default's hypernetwork (README, "Long videos"; not shipped): continue
# video2lora/checkpoints/video2lora-world for 3,000 steps at lr 3e-4 on 4,000 single clips (1,000 of them with an order
# question) and 2,500 two-segment clips whose whole-clip rows the student answers from its halves' (or quarters')
# composed adapters, count tokens 3x and order 4x; then score it on the held-out clips. About 45 minutes on 2 cores
# (teacher 6, training 32, evaluations 5). Every step resumes or skips what exists when rerun.
#
#   bash scripts/compose_finetune.sh      # -> runs/compose_ft/ and its eval folders (OUT=... for another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
DATA=data/world
BASE=video2lora/checkpoints/smolvlm-world
OUT=${OUT:-runs/compose_ft}
w() { python -m video2lora.world --out "$DATA" --no-progress "$@"; }
[ -f "$DATA/train.jsonl" ] || w --split train --num-clips 3000
[ -f "$DATA/train_order.jsonl" ] || w --split train --num-clips 1000 --seed-offset 18000 --require-question-type order --manifest-name train_order.jsonl
[ -f "$DATA/train_two_segment.jsonl" ] || w --split train --num-clips 2500 --two-segment
[ -f "$DATA/test.jsonl" ] || w --split test --num-clips 400
[ -f "$DATA/test_two_segment.jsonl" ] || w --split test --num-clips 400 --two-segment
cat "$DATA/train.jsonl" "$DATA/train_order.jsonl" > "$DATA/train_all.jsonl"
python scripts/composition_rows.py --whole "$DATA/train_two_segment.jsonl" > "$DATA/train_two_segment_whole.jsonl"
echo "teacher start $(date)"
torchrun --nproc_per_node 2 -m video2lora.teacher --model "$BASE" --manifest "$DATA/train_all.jsonl" \
  --output "$DATA/train_teacher.jsonl" --num_frames 4 --batch_size 64 --top_k_logprobs 8 --no_progress
torchrun --nproc_per_node 2 -m video2lora.teacher --model "$BASE" --manifest "$DATA/train_two_segment_whole.jsonl" \
  --output "$DATA/train_two_segment_teacher.jsonl" --num_frames 8 --batch_size 64 --top_k_logprobs 8 --no_progress
cp "$DATA/train_teacher.jsonl" "$DATA/train_compose_teacher.jsonl"
python scripts/composition_rows.py "$DATA/train_two_segment_teacher.jsonl" >> "$DATA/train_compose_teacher.jsonl"
wc -l "$DATA/train_compose_teacher.jsonl"
echo "train start $(date)"
resume=(); ls -d $OUT/checkpoint-* >/dev/null 2>&1 && resume=(--resume_from_checkpoint last)
python train_hf.py --init_from video2lora/checkpoints/video2lora-world --base_model_reference ../smolvlm-world \
  --train_manifest "$DATA/train_compose_teacher.jsonl" --data_root "$DATA" --output_dir $OUT \
  --num_frames 4 --questions_per_video 16 --per_device_train_batch_size 8 --kl_weight 1.0 \
  --question_type_weights order=4,count=3 --max_steps 3000 --learning_rate 3e-4 --logging_steps 25 \
  --save_strategy steps --save_steps 250 --save_total_limit 2 --report_to none "${resume[@]}"
ln -sfn ../$BASE runs/smolvlm-world  # the checkpoint names its base as ../smolvlm-world
python -m video2lora.cli eval --manifest "$DATA/test.jsonl" --model $OUT --output_dir $OUT/eval \
  --overwrite
for segments in 2 4; do
  python -m video2lora.cli eval --manifest "$DATA/test_two_segment.jsonl" --where segment=whole --segments $segments \
    --compose concat --num_frames 4 --model $OUT --output_dir $OUT/eval-compose-concat-$segments \
    --overwrite
done
echo "done $(date)"
