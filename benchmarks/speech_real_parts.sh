#!/usr/bin/env bash
# Speech on real parts (benchmarks/RESULTS.md): Moonshine's first pass on every evaluation split of a
# speech run, then Whisper-LLaDA's deliberation over it with the audio and with the text-only control,
# printed as one table. The run must name task.extra_splits (spoken_asr_moonshine does).
#
#   bash benchmarks/speech_real_parts.sh [RUN] [SPLITS] [DELIBERATION SPLITS]
#   bash benchmarks/speech_real_parts.sh runs/spoken_asr_moonshine "test test_accents test_piper real" "test test_piper"
#
# A conv-tower run (spoken_asr) reads the extra splits with --set 'task.extra_splits=[test_piper,real]'.
set -euo pipefail
run=${1:-runs/spoken_asr_moonshine}
splits=${2:-test test_accents test_piper real}
deliberate_splits=${3:-test test_piper}
mmdiff=${MMDIFF:-mmdiff}
for split in $splits; do
  [ -f "$run/eval/first_pass_moonshine_${split}_metrics.json" ] \
    || "$mmdiff" first-pass --run "$run" --split "$split" > /dev/null
done
for split in $deliberate_splits; do
  hypotheses="$run/eval/first_pass_moonshine_${split}.jsonl"
  for flags in "--mode chunks --free-length" "--mode chunks --free-length --text-only" \
    "--mode low_confidence --free-length" "--mode low_confidence --free-length --text-only"; do
    # shellcheck disable=SC2086  # the flags are separate words
    "$mmdiff" deliberate --run "$run" --hypotheses "$hypotheses" --split "$split" $flags \
      | python3 -c "import json, sys; m = json.loads(sys.stdin.read().split('wrote:')[0]); \
print(json.dumps({'split': '$split', 'flags': '$flags', **m}))" >> "$run/eval/deliberation_table.jsonl"
  done
done
python3 - "$run" <<'EOF'
import json
import sys
from pathlib import Path

run = Path(sys.argv[1])
print("| split | first pass WER | S / D / I / N | RTF |")
print("|---|---|---|---|")
for path in sorted(run.glob("eval/first_pass_moonshine_*_metrics.json")):
    m = json.loads(path.read_text())
    print(f"| {m['split']} | {100 * m['wer']:.1f} % | {m['S']} / {m['D']} / {m['I']} / {m['N']} | {m.get('real_time_factor')} |")
table = run / "eval/deliberation_table.jsonl"
if table.is_file():
    print()
    print("| split | deliberation | WER before | WER after | model calls |")
    print("|---|---|---|---|---|")
    for line in table.read_text().splitlines():
        m = json.loads(line)
        print(
            f"| {m['split']} | {m['flags']} | {100 * m['wer_before']:.1f} % | {100 * m['wer_after']:.1f} % "
            f"| {m['model_calls']} |"
        )
EOF
