#!/usr/bin/env bash
# MOSnet on the synthetic phantoms: joint training on a native and a contrast dataset, evaluation
# on held-out phantoms (other seeds), and the paper's Table 3 partial-label experiment.
# Usage: [EXPERIMENT=joint|partial|ablation|all] bash experiments/mosnet_synthetic.sh WORKDIR [EPOCHS] [MAX_MINUTES]
#   joint:    the full model on native + contrast, evaluated on held-out phantoms of both conditions
#   partial:  the same with kidneys and bladder unannotated in the native dataset (paper's Table 3),
#             evaluated as predicted (those organs read under the contrast code) and with --no-borrow
#   ablation: BM, BM_CM and BM_RB with the joint run's settings, then the comparison table against
#             the joint run (full$TAG), which is trained first if it is missing (paper's Table 4)
# WIDTH (default 8) sets the model width, STRIDE (default 2) the slice stride, TAG a suffix for the
# joint run's name (full$TAG). A run whose checkpoint exists is resumed (e.g. with more EPOCHS).
# Seeds: training native 0-9, contrast 100-109; held-out native 200-207, contrast 300-307.
set -euo pipefail
work=${1:?work folder}; epochs=${2:-30}; minutes=${3:-95}
common=(--width "${WIDTH:-8}" --image-size 128 --slice-stride "${STRIDE:-2}" --epochs "$epochs" --max-minutes "$minutes" --device auto)
mkdir -p "$work"
[ -d "$work/data/native" ]   || mousesegment synth ct --out "$work/data/native"   --count 10 --seed 0   --condition native
[ -d "$work/data/contrast" ] || mousesegment synth ct --out "$work/data/contrast" --count 10 --seed 100 --condition contrast
[ -d "$work/data/native_nokidney" ] || mousesegment synth ct --out "$work/data/native_nokidney" --count 10 --seed 0 \
    --condition native --unannotated kidneys,bladder
[ -d "$work/test/native" ]   || mousesegment synth ct --out "$work/test/native"   --count 8 --seed 200 --condition native
[ -d "$work/test/contrast" ] || mousesegment synth ct --out "$work/test/contrast" --count 8 --seed 300 --condition contrast

run() {  # name, then the datasets; VARIANT picks the ablation variant (default full)
  local name=$1; shift
  local data=(); for d in "$@"; do data+=(--data "$work/data/$d"); done
  mousesegment train mosnet "${data[@]}" --out "$work/models/$name" "${common[@]}" --variant "${VARIANT:-full}" \
    $( [ -f "$work/models/$name/checkpoint/state.json" ] && echo --resume )
  for c in native contrast; do
    mousesegment evaluate ct --model "$work/models/$name" --data "$work/test/$c" --out "$work/reports/$name/$c"
  done
}
partial() {
  run partial native_nokidney contrast
  mousesegment evaluate ct --no-borrow --model "$work/models/partial" --data "$work/test/native" \
    --out "$work/reports/partial_no_borrow/native"
}
ablation() {  # the full variant is the joint run: same data, settings and seed
  [ -f "$work/reports/full${TAG:-}/contrast/per_scan.csv" ] || run "full${TAG:-}" native contrast
  for v in ${VARIANTS:-bm bm_cm bm_rb}; do VARIANT=$v run "ablation_$v" native contrast; done
}
ablation_table() {
  for c in native contrast; do
    mousesegment evaluate compare --reference full --out "$work/reports/ablation_$c.md" \
      "full=$work/reports/full${TAG:-}/$c" $(for v in bm bm_cm bm_rb; do echo "$v=$work/reports/ablation_$v/$c"; done)
  done
}
case "${EXPERIMENT:-all}" in
  joint)    run "full${TAG:-}" native contrast ;;
  partial)  partial ;;
  ablation) ablation; ablation_table ;;
  table)    ablation_table ;;
  none)     ;;
  all)      run "full${TAG:-}" native contrast; partial; ablation; ablation_table ;;
esac
