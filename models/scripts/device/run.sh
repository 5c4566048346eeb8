#!/bin/bash
# The GPU stage on a machine that got a pack from pack.py (PACK/common/run.sh, PACK/MODEL/...).
#
#   run.sh start MODEL MINUTES BATCH LR   unpack (once per machine), start training MODEL in the
#                                         background, return after its first steps
#   run.sh collect SECONDS                wait for every started run (interrupting any still
#                                         running after SECONDS: it saves), export each EMA as
#                                         f16 with its log into $OUT
#   run.sh unpack                         only unpack the common part (a pack sent in two calls)
#   run.sh bench                          `bench` on the GPU and the CPU (textok's pack)
#   run.sh speed MODEL                    training speed with the EMA read back every step and
#                                         every 8th (--ema-every; 45 s of training each, about
#                                         2.5 minutes in all): run before `start`, pass the faster
#                                         as EMA_EVERY
#
# How the shipped round ran, through a tool that sends at most 64 MiB per call and keeps the
# machine for 30 s between calls: call 1 carried common + baseline and ran `start baseline 7.5
# 256 3e-4`; call 2 carried common + textok and ran `start textok 8 256 3e-4` then `collect 515`.
# WORK (default /tmp/work) is where it unpacks; DEVICE=cpu tries it without a GPU.
set -u
P=$(cd "$(dirname "$0")/.." && pwd); W=${WORK:-/tmp/work}; OUT=${OUT:-/tmp/out}
mkdir -p $W $OUT
if [ ! -x $W/bin ]; then
  t0=$(date +%s)
  # NVIDIA's Vulkan driver (libGLX_nvidia) also needs glvnd's libraries: one lent machine had the
  # Vulkan loader but not those, and wgpu found no adapter until .gl's packages were unpacked.
  if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
  mkdir -p $W/models/text-encoder $W/corpus
  xz -dc $P/common/bin.xz > $W/bin.tmp && chmod +x $W/bin.tmp
  xz -dc $P/common/te.xz > $W/models/text-encoder/model.safetensors
  cp $P/common/config.json $W/models/text-encoder/
  xz -dc $P/common/tokenizer.json.xz > $W/models/text-encoder/tokenizer.json
  xz -dc $P/common/captions.jsonl.xz > $W/corpus/captions.jsonl
  python3 $P/common/placeholders.py $W/corpus
  mv $W/bin.tmp $W/bin
  echo "unpacked common in $(( $(date +%s) - t0 )) s"
fi
export TEXTOK_MODELS_DIR=$W/models RAYON_NUM_THREADS=4
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
# Checks the adapter and unpacks MODEL's files into $W/MODEL (latents into RUN_DIR).
unpack_twin() {
  local twin=$1 run=$2
  $W/bin devices > $W/devices.txt 2>&1; tail -4 $W/devices.txt
  if [ "$device" = gpu ] && ! grep -qi nvidia $W/devices.txt; then
    echo "ERROR: wgpu sees no NVIDIA adapter"; ldconfig -p | grep -i vulkan; ls /usr/local/nvidia/share/vulkan/icd.d/ /usr/share/vulkan/icd.d/ 2>&1; nvidia-smi -L; exit 1
  fi
  mkdir -p $run
  xz -dc $P/$twin/tokenizer.xz > $W/$twin/tokenizer.safetensors
  xz -dc $P/$twin/latents-f16.xz | python3 $P/common/widen_latents.py > $run/latents.bin
  xz -dc $P/$twin/dit.xz > $W/$twin/dit.safetensors
}
# dit_command MODEL RUN_DIR MINUTES BATCH LR: sets CMD to the GPU stage's command (SEED, default 2; EMA_EVERY,
# default 1).
dit_command() {
  local R=$W/$1
  CMD=($W/bin train dit --data $W/corpus --preset small --steps ${STEPS:-100000}
    --warmup 100 --max-minutes $3 --batch $4 --lr $5 --min-budget 32
    --max-budget 96 --checkpoint-minutes 2 --seed ${SEED:-2} --device $device --ema-every ${EMA_EVERY:-1}
    --tokenizer $R/tokenizer.safetensors --init-from $R/dit.safetensors --out $2)
}
device=${DEVICE:-gpu}
case $1 in
unpack)
  # Only the common part, unpacked above: for a pack over the tool's 64 MiB, call 1 carries
  # .gl and .devpack/common and runs this; call 2, on the still-warm machine, carries .gl,
  # .devpack/common/run.sh, .devpack/common/widen_latents.py and the twin, and runs `start`.
  ;;
speed)
  twin=$2
  for every in 1 8; do
    run=$W/$twin/speed-$every; rm -rf $run; unpack_twin $twin $run
    EMA_EVERY=$every dit_command $twin $run 0.75 ${BATCH:-256} 3e-4
    timeout ${SPEED_TIMEOUT:-240} "${CMD[@]}" > $run.log 2>&1
    echo "--ema-every $every: $(grep '"step"' $run/log.jsonl | tail -1)"
  done
  ;;
start)
  twin=$2 minutes=$3 batch=$4 lr=$5
  R=$W/$twin; unpack_twin $twin $R/run
  dit_command $twin $R/run $minutes $batch $lr
  setsid nohup "${CMD[@]}" > $R/train.log 2>&1 < /dev/null &
  echo $! > $R/pid
  # Wait for the first steps so a broken start shows in this call's output.
  for i in $(seq 1 ${START_WAIT:-90}); do
    grep -q "^step" $R/train.log 2>/dev/null && break
    if grep -q "encoding the latents" $R/train.log; then
      echo "ERROR: the packed latents were not accepted; stopping $twin"; kill $(cat $R/pid); break
    fi
    kill -0 $(cat $R/pid) 2>/dev/null || break
    sleep 1
  done
  sleep ${AFTER_FIRST_STEP:-10}
  echo "--- $twin after $i s:"; tail -c 600 $R/train.log; echo
  ;;
bench)
  xz -dc $P/textok/tokenizer.xz > $W/models/textok-small.safetensors  # speed does not depend on weights
  xz -dc $P/textok/dit.xz > $W/models/dit-small.safetensors
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -E "^Model name|^CPU\(s\)"
  timeout 120 $W/bin bench --device gpu --steps 50 --repeats 3 2>&1
  unset RAYON_NUM_THREADS
  timeout ${CPU_BENCH_SECONDS:-80} $W/bin bench --device cpu --steps 50 --repeats 3 2>&1
  ;;
collect)
  deadline=$(( $(date +%s) + $2 ))
  for R in $W/*/; do
    [ -f $R/pid ] || continue
    pid=$(cat $R/pid)
    while kill -0 $pid 2>/dev/null && [ $(date +%s) -lt $deadline ]; do sleep 2; done
    if kill -0 $pid 2>/dev/null; then echo "$R: past the deadline, interrupting"; kill -INT $pid
      for i in $(seq 1 60); do kill -0 $pid 2>/dev/null || break; sleep 1; done; fi
    twin=$(basename $R)
    tail -c 1500 $R/train.log > $OUT/$twin-train.log
    [ -f $R/run/log.jsonl ] && xz -c $R/run/log.jsonl > $OUT/$twin-log.jsonl.xz
    [ -f $R/run/ema.safetensors ] && $W/bin export-f16 $R/run/ema.safetensors $OUT/dit-$twin.safetensors
    echo "--- $twin:"; tail -c 400 $R/train.log; echo
  done
  ls -la $OUT
  ;;
esac
