#!/usr/bin/env bash
# Redraws the charts of docs/results.md from the run directories that comparison.py (and the longer runs
# beside it) wrote. Usage: bash docs/results/plots.sh [RUNS_DIR (default runs)]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cohort="${COHORT:-$here/../../.build/release/cohort}"
runs="${1:-runs}"
c="$runs/comparison"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# One network per run (peer 0), seed 0, every method of one student on shared axes.
for student in resnet8 resnet20; do
  "$cohort" report "$c/$student"/{alone,kd,crcd+kd,rrd+kd,mcl2-nologit,mcl4-nologit,mcl2+crcd}/seed-0 --peer 0 \
    --label alone --label KD --label CRCD+KD --label RRD+KD --label "MCL x2" --label "MCL x4" --label "MCL x2 + CRCD" \
    --out "$tmp/$student.html" --charts "$tmp/$student"
  for chart in test_top1 step_ce; do cp "$tmp/$student/$chart.svg" "$here/$student-$chart.svg"; done
done
# The four MCL terms of a cohort of four resnet8 (seed 0), every peer.
"$cohort" report "$c/resnet8/mcl4-nologit/seed-0" --out "$tmp/mcl4.html" --charts "$tmp/mcl4"
for chart in step_vcl step_soft_vcl step_icl step_soft_icl; do cp "$tmp/mcl4/$chart.svg" "$here/mcl4-resnet8-$chart.svg"; done
# The longer budget: resnet20 alone, with MCL, with layer-wise MCL (full training set, 4 epochs, seed 0).
if [ -d "$runs/budget/alone-s0" ]; then
  "$cohort" report "$runs/budget/alone-s0" "$runs/mcl" "$runs/layer-mcl" --peer 0 \
    --label alone --label "MCL x2" --label "layer-wise MCL x2" --out "$tmp/budget.html" --charts "$tmp/budget"
  for chart in test_top1 step_ce; do cp "$tmp/budget/$chart.svg" "$here/full-resnet20-$chart.svg"; done
fi
# Until the training set is fitted: resnet8 alone and MCL x2 for 30 epochs of the 7,680 images (seed 0).
if [ -d "$runs/overfit/resnet8/alone/seed-0" ]; then
  "$cohort" report "$runs/overfit/resnet8"/{alone,mcl2-nologit}/seed-0 --label alone --label "MCL x2" \
    --out "$tmp/overfit.html" --charts "$tmp/overfit"
  for chart in test_top1 train_accuracy; do cp "$tmp/overfit/$chart.svg" "$here/fitted-resnet8-$chart.svg"; done
fi
# Embedding collapse: a resnet8 MCL x2 cohort (7,680 images, 3 epochs, seed 0) with the paper's weights and
# with the soft terms ramped in over 2 epochs (docs/results.md, "Embedding collapse").
if [ -d "$runs/probe/paper-defaults" ]; then
  "$cohort" report "$runs/probe/paper-defaults" "$runs/probe/soft-ramp-2" --label "paper weights" \
    --label "soft terms ramped in over 2 epochs" --out "$tmp/collapse.html" --charts "$tmp/collapse"
  for chart in step_embedding_cosine step_vcl step_soft_vcl; do cp "$tmp/collapse/$chart.svg" "$here/collapse-$chart.svg"; done
fi
# A strong teacher, little data: resnet8 on 1,024 images for 40 epochs, alone, with the teacher's KD, in MCL cohorts.
if [ -d "$runs/small/resnet8/alone/seed-0" ]; then
  "$cohort" report "$runs/small/resnet8"/{alone,kd,mcl2,mcl2+kd}/seed-0 --peer 0 --label alone --label KD \
    --label "MCL x2" --label "MCL x2 + KD" --out "$tmp/small.html" --charts "$tmp/small"
  for chart in test_top1 train_accuracy step_embedding_cosine; do cp "$tmp/small/$chart.svg" "$here/small-resnet8-$chart.svg"; done
fi
ls "$here"/*.svg
# A small labelled set, fitted: resnet20 alone and MCL x2 (soft ramp 20) on 1,024 images for 60 epochs (seed 0).
if [ -d "$runs/fit20/resnet20/alone/seed-0" ]; then
  "$cohort" report "$runs/fit20/resnet20"/{alone,mcl2}/seed-0 --label alone --label "MCL x2" \
    --out "$tmp/fit20.html" --charts "$tmp/fit20"
  for chart in test_top1 train_accuracy step_embedding_cosine; do cp "$tmp/fit20/$chart.svg" "$here/fit-resnet20-$chart.svg"; done
fi
