#!/bin/sh
# Reproduce models/spikingbrain-tiny: data -> tokenizer -> (checks) -> train -> export + fixture -> model card.
#   tools/train/run.sh [--device cpu|cuda] [--minutes N] [--stage all|prep|train|export] [more train.py args]
# Default: CPU, 60 minutes, batch 8. With --device cuda: batch 64 (the published run: --device cuda --minutes 7.5).
set -e
cd "$(dirname "$0")"
PY=${PYTHON:-/usr/bin/python3}
DEVICE=cpu; MINUTES=60; STAGE=all; EXTRA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2;;
    --minutes) MINUTES=$2; shift 2;;
    --stage) STAGE=$2; shift 2;;
    *) EXTRA="$EXTRA $1"; shift;;
  esac
done
BATCH=64; [ "$DEVICE" = cpu ] && BATCH=8
if [ "$STAGE" = all ] || [ "$STAGE" = prep ]; then
  $PY data.py work                 # installs its Debian packages when missing
  $PY tokenize_data.py work
  if command -v node >/dev/null; then $PY verify_tokenizer.py work; fi
  $PY test_model.py
fi
if [ "$STAGE" = all ] || [ "$STAGE" = train ]; then
  PYTHONUNBUFFERED=1 $PY train.py --device "$DEVICE" --minutes "$MINUTES" --batch $BATCH --out work/run $EXTRA 2>&1 | tee work/train.log
fi
if [ "$STAGE" = all ] || [ "$STAGE" = export ]; then
  $PY export.py --work work --run work/run
  $PY card.py --work work --run work/run
fi
