#!/bin/sh
# Run libFuzzer targets for a bounded time each (make fuzz; fuzz/README.md).
#   fuzz/run.sh SECONDS TARGET...
# Each target starts from its committed seeds (fuzz/corpus/<t>) plus what
# earlier runs found (build/fuzz/corpus/<t>, where new inputs go), with the
# -max_len of fuzz/max_len. A crash, sanitizer report, timeout, leak or
# failed FUZZ_CHECK fails the run; libFuzzer keeps the input as
# build/fuzz/crashes/<t>-crash-... (reproduce: build/fuzz/bin/fuzz_<t> FILE).
# FUZZ_NICE=19 runs the targets under nice; FUZZ_ARGS adds libFuzzer flags;
# FUZZ_OUT (default build/fuzz) holds bin/, corpus/, crashes/ and logs/.
set -u
secs=$1
shift
out=${FUZZ_OUT:-build/fuzz}
mkdir -p "$out/crashes" "$out/logs"
failed=""
total=0
for t in "$@"; do
    bin="$out/bin/fuzz_$t"
    max_len=$(awk -v t="$t" '$1 == t { print $2 }' fuzz/max_len)
    mkdir -p "$out/corpus/$t"
    seeds=""
    [ -d "fuzz/corpus/$t" ] && seeds="fuzz/corpus/$t"
    log="$out/logs/$t.log"
    # shellcheck disable=SC2086
    nice -n "${FUZZ_NICE:-0}" "$bin" -max_total_time="$secs" -max_len="${max_len:-4096}" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$out/crashes/$t-" ${FUZZ_ARGS:-} "$out/corpus/$t" $seeds >"$log" 2>&1
    rc=$?
    execs=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$log")
    total=$((total + ${execs:-0}))
    if [ $rc -ne 0 ]; then
        failed="$failed $t"
        echo "fuzz: $t FAILED (exit $rc) after ${execs:-?} executions; log $log"
        grep -E 'ERROR|FUZZ_CHECK|SUMMARY|Test unit written' "$log" | head -20
    else
        echo "fuzz: $t ${execs:-?} executions, no finding"
    fi
done
echo "fuzz: $total executions in total"
if [ -n "$failed" ]; then
    echo "fuzz: findings in:$failed (inputs under $out/crashes/)" >&2
    exit 1
fi
