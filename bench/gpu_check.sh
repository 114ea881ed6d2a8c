#!/usr/bin/env bash
# The GPU check of the kit, for a machine whose python already has torch, torchvision, pandas,
# matplotlib and onnx but no .venv, no audio libraries and no internet (the lent GPU machines of
# the tool library's `device`, or any CUDA box). It trains from a preprocessed feature cache that
# travels with the code, so no audio is decoded there.
#
#   here:  bench/gpu_check.sh stage ../shared/realbirds
#          -> data/gpu/realbirds/ (the dataset's CSVs only) beside data/cache/realbirds/
#          carry both paths: data/gpu/realbirds and data/cache/realbirds (42 MB for realbirds)
#   there: bench/gpu_check.sh run data/gpu/realbirds "$OUT" 480
#          -> in priority order, each step in what is left of 480 s: make bench-train with the
#             training default workers (where they fail: without, and training follows suit); the
#             four models trained from scratch; bench-train without workers (what workers bring);
#             5-fold cross-validation model by model, then resnet18's levers one at a time (CV_RUNS),
#             as many as time leaves. Logs, the bench table, every run's config, history, learning
#             curves and split are written to bench/out/gpu_check/ there, and OUT receives a few
#             flat files (the device tool brings back at most 8, none in folders): steps.txt,
#             gpu.txt, the two bench tables as JSON, report.txt, and the rest packed in
#             gpu_check.tar.gz (logs and tables) and gpu_check_media.tar.gz (curves and logits).
#   here:  bench/gpu_check.sh unpack FOLDER_OF_THOSE_FILES
#          -> bench/out/gpu_check/ (what the GPU box wrote), and prints its steps and bench table
set -u
mode=${1:?usage: bench/gpu_check.sh stage DATA | run DATA OUT [SECONDS] | unpack FOLDER}
data=${2:?give the dataset folder (unpack: the folder of the returned files)}
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${BIRDKIT_ROOT:-$repo}  # where the kit keeps caches, runs and bench output
PY=${PYTHON:-python3}
MODELS=${MODELS:-simple_cnn resnet18 inception_v3 efficientnet_b0}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this script (the tests do that)
STEPS=${STEPS:-200}  # timed steps of bench-train per model
WARMUP=${WARMUP:-10}  # untimed steps first: workers start, cuDNN picks its kernels
TRAIN_ARGS=${TRAIN_ARGS:-}
REPORT_S=${REPORT_S:-40}  # kept for the last step, the run table
BENCH_S=${BENCH_S:-240}  # at most this per bench-train step (four models: real, ceiling, 4 epochs of bookkeeping)

if [ "$mode" = stage ]; then
    name=$(basename "$(cd "$data" && pwd)")
    cache="$root/data/cache/$name"
    [ -d "$cache" ] || { echo "no feature cache at $cache: run 'make preprocess DATA=$data' first" >&2; exit 1; }
    mkdir -p "$root/data/gpu/$name/train_audio"
    cp "$data"/*.csv "$root/data/gpu/$name/"
    echo "staged: carry data/gpu/$name and data/cache/$name ($(du -sh "$cache" | cut -f1))"
    exit 0
fi
work="$root/bench/out/gpu_check"  # everything this check writes, whole; OUT gets it flat and packed
if [ "$mode" = unpack ]; then
    for f in gpu_check.tar.gz gpu_check_media.tar.gz; do
        [ -f "$data/$f" ] || { echo "no $f in $data: give the folder the device tool returned (files_at)" >&2; exit 1; }
    done
    rm -rf "$work" && mkdir -p "$work"
    for f in gpu_check.tar.gz gpu_check_media.tar.gz; do tar -xzf "$data/$f" -C "$work"; done
    cat "$work/gpu.txt" "$work/steps.txt"; tail -n 20 "$work/bench_train.log" 2>/dev/null
    echo "unpacked into $work"
    exit 0
fi
[ "$mode" = run ] || { echo "mode must be stage, run or unpack, got $mode" >&2; exit 2; }
out=${3:?give the folder for results}
budget_s=${4:-480}
start=$(date +%s)
left() { echo $((budget_s - ($(date +%s) - start))); }
mkdir -p "$out" "$data/train_audio"  # the layout check wants the folder; the cache has the audio's features
out=$(cd "$out" && pwd); data=$(cd "$data" && pwd)  # both stay valid after the cd below
rm -rf "$work" && mkdir -p "$work"
touch "$work/.started"  # what this check writes is newer
cd "$repo"

# The device tool returns at most 8 files of 16 MiB, none deeper than two folders: OUT gets the
# summaries flat and the rest in two archives, also when a step or the whole script is cut short.
ship() {
    local runs="$root/train/runs/$(basename "$data")"
    # no checkpoints (hundreds of MB); the validation logits travel: another activation can be scored from them
    (cd "$runs" 2>/dev/null && find . -type f -newer "$work/.started" \( -name '*.json' -o -name '*.png' -o -name '*.csv' \
        -o -name '*.npz' \) -exec cp --parents {} "$work/runs/" \;)
    for f in steps.txt gpu.txt bench_train.json bench_train_no_workers.json; do
        [ -f "$work/$f" ] && cp "$work/$f" "$out/"
    done
    [ -f "$work/report.log" ] && cp "$work/report.log" "$out/report.txt"
    (cd "$work" && find . -type f ! -name '*.png' ! -name '*.npz' ! -name .started -print0 \
        | tar -czf "$out/gpu_check.tar.gz" --null -T -)
    (cd "$work" && find . -type f \( -name '*.png' -o -name '*.npz' \) -print0 \
        | tar -czf "$out/gpu_check_media.tar.gz" --null -T -)
    local limit=$((16 * 1024 * 1024))
    if [ "$(stat -c %s "$out/gpu_check_media.tar.gz")" -gt "$limit" ]; then  # too big to come back: the curves alone
        (cd "$work" && find . -type f -name 'curves.png' -print0 | tar -czf "$out/gpu_check_media.tar.gz" --null -T -)
        echo "gpu_check_media.tar.gz held only the curves: all of it was over 16 MiB" | tee -a "$work/steps.txt"
    fi
    echo "done in $(($(date +%s) - start)) s; $(ls "$out" | wc -l) files in $out; the whole check in $work"
}
mkdir -p "$work/runs"
trap ship EXIT

step() {  # step NAME COMMAND...: run it within what is left of the budget (and STEP_CAP_S where set), log
    # it, go on whatever happens; returns the command's exit status (1 when skipped)
    local name=$1; shift
    local t=$(left)
    [ "$name" = report ] || t=$((t - REPORT_S))  # the report comes last and must not find the budget spent
    [ -n "${STEP_CAP_S:-}" ] && [ "$STEP_CAP_S" -lt "$t" ] && t=$STEP_CAP_S  # a hung step leaves time for the rest
    if [ "$t" -lt 20 ]; then echo "== $name: skipped, ${t}s left" | tee -a "$work/steps.txt"; return 1; fi
    echo "== $name ($t s allowed, $(left) s left): $*" | tee -a "$work/steps.txt"
    local t0=$(date +%s) rc
    timeout "$t" "$@" > "$work/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - t0)) s" | tee -a "$work/steps.txt"
    tail -n 12 "$work/$name.log"
    return $rc
}

bench() {  # bench NAME [FLAGS...]: make bench-train's table; kept only when this step wrote it
    local name=$1; shift
    rm -f "$root/bench/out/train.json"  # a failed step must not ship an earlier step's table
    STEP_CAP_S=$BENCH_S step "$name" $PY -m bench.train --data "$data" --models $MODELS --device $DEVICE \
        --steps $STEPS --warmup $WARMUP "$@" && cp "$root/bench/out/train.json" "$work/$name.json"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cpus: $(nproc)"; df -h /dev/shm  # DataLoader workers hand their batches over through /dev/shm
  $PY -m torch.utils.collect_env
} > "$work/gpu.txt" 2>&1
cat "$work/gpu.txt"

workers_failed() {  # the step ended by itself (no timeout) with a DataLoader worker's error in its log
    [ "$1" != 124 ] && [ "$1" != 137 ] && grep -qiE 'DataLoader worker|shared memory|/dev/shm|Bus error' "$work/$2.log"
}

# The table first, with the training default's workers. Where the workers fail, the same without
# them, and training then goes without them too; otherwise the no-workers table comes after training.
workers_ok=1
bench bench_train || { workers_failed $? bench_train && workers_ok=0; }
if [ $workers_ok = 0 ] && bench bench_train_no_workers --num-workers 0; then
    TRAIN_ARGS="--num-workers 0 $TRAIN_ARGS"
    echo "== the DataLoader workers failed: training goes without them (--num-workers 0)" | tee -a "$work/steps.txt"
fi
step train $PY -m train --data "$data" --models $MODELS --no-pretrained --device $DEVICE $TRAIN_ARGS
[ $workers_ok = 1 ] && bench bench_train_no_workers --num-workers 0  # how much the workers bring
# model:recipe[:flags], most wanted first: the kit's default, then the two the CPU could not afford,
# with the reference's from-scratch recipe and with their own; then, while time is left, resnet18's
# levers one at a time on the same folds (flags joined by commas), and other folds (seed 1).
LEVERS="--seed=1 --ema-decay=0.99 --epochs=80 --lr=5e-4 --lr=2e-3 --weight-decay=0.05 --lr-schedule=onecycle,--warmup-epochs=0
        --random-crop --balance-power=0.5 --mixup-prob=0 --no-spec-mask --power-mix-prob=0.5"
for run in ${CV_RUNS-resnet18:auto efficientnet_b0:scratch inception_v3:scratch simple_cnn:auto efficientnet_b0:seed \
        inception_v3:seed $(for lever in $LEVERS; do echo "resnet18:auto:$lever"; done)}; do
    IFS=: read -r model recipe flags <<< "$run"
    flags=${flags//,/ }
    tag=$(echo "$flags" | sed 's/--//g; s/[= ]/_/g')  # cv_resnet18_auto_ema-decay_0.99
    step "cv_${model}_${recipe}${tag:+_$tag}" $PY -m train --data "$data" --models "$model" --recipe "$recipe" \
        --no-pretrained --device $DEVICE --cv 5 --holdout-fraction 0 $flags $TRAIN_ARGS
done
# --no-onnx: the table comes back whatever time is left (exporting and timing four models takes
# longer than the report's share; their CPU time depends on the architecture: `make report` here)
step report $PY -m train.report --data "$data" --no-onnx
exit 0  # each step's exit status is in steps.txt; the EXIT trap ships what there is
