#!/usr/bin/env bash
# The runs behind the committed results/*.json, on the offline stand-in models
# (see README, "Stand-in models"). Usage:
#   bash scripts/standin_runs.sh MODELS_DIR TEXT_FILE DEVICE STEP
# MODELS_DIR holds smollm2-135m and gpt2-random (../shared/tools/make_models.py),
# TEXT_FILE is WikiText-2's wiki.test.raw, STEP one of: baseline part1 sensitivity cpu
# part2 (perplexity, on the GPU) part2-speed (GPT-2 shapes, GPU) part2-cpu-speed part2-cpu-ppl (CPU, prefix)
# gguf (CPU, prefix; GGUF files go to MODELS_DIR/gguf).
# EXTRA_ARGS (environment) is appended to every command, e.g. "--skip-latency --results-dir DIR".
set -euo pipefail
models=$1; text=$2; device=$3; step=$4
read -r -a extra <<< "${EXTRA_ARGS:-}"
smol_note="smollm2-135m (SmolLM2-135M-Instruct, dequantized from Q4_1) stands in for gpt2 for perplexity"
smol=(--model "$models/smollm2-135m" --text-file "$text" --device "$device" --quiet --stand-in "$smol_note" "${extra[@]}")
g2r=(--model "$models/gpt2-random" --text-file "$text" --device "$device" --quiet --random-weights
     --stand-in "gpt2-random (GPT-2 small shapes, random weights) stands in for gpt2 for memory and latency; its perplexity means nothing" "${extra[@]}")
case $step in
  baseline)
    python evaluate.py "${smol[@]}" --max-length 1024 --stride 1024
    python evaluate.py "${smol[@]}" --max-length 1024 --stride 512 ;;
  part1)
    python part1_quantize_scratch.py "${smol[@]}" --stride 512 --mode whole --scheme per_channel
    python part1_quantize_scratch.py "${smol[@]}" --stride 512 --mode whole --scheme per_tensor
    python part1_quantize_scratch.py "${smol[@]}" --stride 512 --mode whole --scheme asymmetric
    python part1_quantize_scratch.py "${smol[@]}" --stride 512 --mode whole --scheme group --group-size 64
    python part1_quantize_scratch.py "${smol[@]}" --stride 512 --mode selective --blocks 0,1 --components attn,ffn ;;
  sensitivity)
    python part1_quantize_scratch.py "${smol[@]}" --stride 512 --sensitivity ;;
  cpu)  # memory and latency of GPT-2's shapes; perplexity on a 8192-token prefix only
    python evaluate.py "${g2r[@]}" --max-tokens 8192 --per-line 0
    python part1_quantize_scratch.py "${g2r[@]}" --max-tokens 8192 --per-line 0 --mode whole
    python part1_quantize_scratch.py "${g2r[@]}" --bench ;;
  part2)  # perplexity of every bitsandbytes mode, fp16 for reference, scratch 4-bit for the comparison
    python evaluate.py "${smol[@]}" --max-length 1024 --stride 512 --dtype float16
    python part2_bnb_nf4.py "${smol[@]}" --stride 512 --mode all
    python part1_quantize_scratch.py "${smol[@]}" --stride 512 --bits 4 --scheme nf4
    python part1_quantize_scratch.py "${smol[@]}" --stride 512 --bits 4 --scheme int4 ;;
  part2-speed)  # memory and latency of GPT-2's shapes per mode, then every method side by side
    python part2_bnb_nf4.py "${g2r[@]}" --max-tokens 8192 --per-line 0 --mode all
    python part2_bnb_nf4.py "${g2r[@]}" --bench ;;
  part2-cpu-speed)  # the side-by-side bench on this CPU, fewer repeats and tokens (bnb int8 decodes slowly here)
    python part2_bnb_nf4.py "${g2r[@]}" --bench --repeats 5 --new-tokens 64 ;;
  part2-cpu-ppl)  # the CPU backend's perplexity, on a 16,384-token prefix (the full text takes hours here)
    python evaluate.py "${smol[@]}" --stride 512 --max-tokens 16384 --per-line 0 --skip-latency
    python part2_bnb_nf4.py "${smol[@]}" --stride 512 --max-tokens 16384 --per-line 0 --skip-latency --mode all
    python part2_bnb_nf4.py "${smol[@]}" --compare ;;
  gguf)  # llama.cpp on the CPU, same 16,384-token prefix; HF float16 on it for the conversion check
    python evaluate.py "${smol[@]}" --stride 512 --max-tokens 16384 --per-line 0 --skip-latency --dtype float16
    python bonus_gguf.py "${smol[@]}" --stride 512 --max-tokens 16384 --gguf-dir "$models/gguf"
    q4km=("$models"/gguf/smollm2-135m-*-Q4_K_M.gguf)        # <model>-<content hash>-<type>.gguf
    python bonus_gguf.py --stand-in "$smol_note" --inspect "${q4km[0]}" \
      --out results/gguf-inspect__smollm2-135m-Q4_K_M.json > /dev/null ;;
  *) echo "unknown step '$step'" >&2; exit 2 ;;
esac
