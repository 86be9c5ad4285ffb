#!/usr/bin/env bash
# The shapes VQA pipeline (pretrain-tower -> stage 1 -> stage 2) and its variants on one GPU, several runs
# side by side (each is far too small to fill the card): tower pre-training length and batch, the tower's
# stage-2 learning rate, a long stage 2 for the curve to convergence, and the text-only control.
# Usage (repository root, open_clip and webdataset importable): OUT=folder bash benchmarks/shapes_vqa_sweep.sh
# Every run's metrics.jsonl and eval/ go into $OUT/results.tar.gz after each phase;
# `python benchmarks/vqa_curve.py <run folders>` prints their tables.
set -uo pipefail
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
R=/tmp/sweep/runs D=/tmp/sweep/data OUT=${OUT:-/tmp/sweep/out}
mkdir -p "$R" "$OUT"
mm() { python3 -c 'import sys; from multimodal.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
common=(--set "task.data_dir=$D" --set "train.output_dir=$R")
gpu=(--set train.precision=32-true --set train.threads=2)
if [[ -n "${SMOKE:-}" ]]; then  # SMOKE=1: two steps of everything, to check the script on a CPU
  common+=(--set train.eval_every=0); gpu=(--set train.max_steps=2 --set train.eval_limit=20 --set train.precision=32-true)
  tower_smoke=(--set train.steps=2)
fi
pack() { (cd "$R" && tar czf "$OUT/results.tar.gz" --exclude=checkpoints --exclude='*.safetensors' .); echo "packed: $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "from tasks.vqa import VQAConfig, embedded_dataset; print(embedded_dataset(VQAConfig(data_dir='$D')))"

# phase 1: towers (README 500 x 256; 500 x 128; 2,000 x 256)
mm pretrain-tower -c shapes_vqa_tower "${common[@]}" ${tower_smoke[@]+"${tower_smoke[@]}"} --set name=t500 > "$R/t500.log" 2>&1 &
mm pretrain-tower -c shapes_vqa_tower "${common[@]}" ${tower_smoke[@]+"${tower_smoke[@]}"} --set name=t500b128 --set train.batch_size=128 > "$R/t500b128.log" 2>&1 &
mm pretrain-tower -c shapes_vqa_tower "${common[@]}" --set name=t2000 --set train.steps=2000 ${tower_smoke[@]+"${tower_smoke[@]}"} > "$R/t2000.log" 2>&1 &
wait; pack towers; date

# phase 2: stage 1 on each tower
for t in t500 t500b128 t2000; do
  mm train -c shapes_vqa_stage1 "${common[@]}" "${gpu[@]}" --set name=s1_$t \
    --set modalities.image.encoder_args.weights=$R/$t/tower.safetensors > "$R/s1_$t.log" 2>&1 &
done
wait; pack stage1; date

# phase 3: stage 2 variants and the control
s2() { name=$1; shift; mm train -c shapes_vqa_stage2 "${common[@]}" "${gpu[@]}" --set name=$name "$@" > "$R/$name.log" 2>&1; }
s2 s2_t500 --set init_from=$R/s1_t500 &
s2 s2_t500b128 --set init_from=$R/s1_t500b128 &
s2 s2_t2000 --set init_from=$R/s1_t2000 &
s2 s2_t500_enc_equal --set init_from=$R/s1_t500 --set train.part_lr.encoder=2.5e-4 &
mm train -c shapes_vqa_stage2 "${common[@]}" "${gpu[@]}" --set name=text_only --set task.text_only=true --set init_from=null > "$R/text_only.log" 2>&1 &
shorts=$(jobs -p)
s2 s2_t500_long --set init_from=$R/s1_t500 --set train.max_steps=8000 --set train.eval_every=1000 "${gpu[@]}" &
wait $shorts; pack short; date
wait; pack all; date
