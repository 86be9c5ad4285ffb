#!/usr/bin/env bash
# Every GPU figure in one script (run from the repository root on the device machine):
# correctness on the GPU against the CPU reference, the decoding tables of benchmarks/decode.py, then
# the training throughput table of benchmarks/train_mfu.py.
# The device image has torch, lightning, safetensors, pyyaml and tqdm; the project runs from the tree.
set -euo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_compiled_decoding.py
# Issue figure 1: llada_1b, batch 1, prompt 128, gen 256, block 32, one token per step.
python3 benchmarks/decode.py --preset llada_1b --dtype bfloat16 --prompt 128 --gen 256 --blocks 32 \
  --caches none,prefix,dual --repeats 2
# Issue figure 2: the same at batch 16 with prompts of mixed lengths, caches on.
python3 benchmarks/decode.py --preset llada_1b --dtype bfloat16 --prompt 128 --gen 256 --blocks 32 \
  --batch 16 --mixed --caches none,prefix,dual --repeats 1
# Fast decoding item 4, per-step overhead: the same (dual cache, batch 1) eager vs the step's model call
# compiled and replayed as CUDA graphs; the ms/step column is the per-step cost (compile s: the untimed first run).
python3 benchmarks/decode.py --preset llada_1b --dtype bfloat16 --prompt 128 --gen 256 --blocks 32 \
  --caches dual --compile none,reduce-overhead --repeats 1
# Issue 7 figure: training llada_1b at sequence 2048, bf16 autocast: tokens/s, MFU and peak memory at
# batch 4 and 8, eager and with regional torch.compile (target: >= 45% MFU, batch 8 inside 80 GB).
python3 benchmarks/train_mfu.py --preset llada_1b --seq 2048 --batches 4,8 --steps 10 --warmup 3 \
  --settings eager,compile
# Issue 30, the other families: LLaDA-MoE-7B-A1B's shape (random weights, grouped experts) next to the
# dense rows above, and block-diffusion decoding of llada_1b with the exact block cache.
python3 benchmarks/decode.py --preset llada_moe_7b --dtype bfloat16 --prompt 128 --gen 256 --blocks 32 \
  --caches none,dual --repeats 1
python3 benchmarks/decode.py --preset llada_1b --dtype bfloat16 --prompt 128 --gen 256 --blocks 32 \
  --caches none,block --repeats 1
