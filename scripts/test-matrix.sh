#!/usr/bin/env bash
# Run scripts/test-airflow.sh for several Airflow versions at once, each into its own log:
#   scripts/test-matrix.sh 3.0.6 3.1.8 3.2.2
# The legs share nothing (own venv, own temporary Airflow home, free ports), so they run side by side:
# one leg spends much of its time waiting on its loopback servers, and two cores keep three busy.
# Each log is printed whole when its leg ends; the exit status is non-zero if any leg failed.
# MATRIX_PYTEST_ARGS, if set, is passed to every leg's pytest (say, --ignore=tests/integration/x.py).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .matrix-logs
declare -A pids
for version in "$@"; do
    # shellcheck disable=SC2086  # MATRIX_PYTEST_ARGS: pytest arguments for every leg, split on spaces
    scripts/test-airflow.sh "$version" ${MATRIX_PYTEST_ARGS:-} > ".matrix-logs/airflow-$version.log" 2>&1 &
    pids[$version]=$!
done
status=0
summary=()
for version in "$@"; do
    if wait "${pids[$version]}"; then result="passed"; else result="FAILED"; status=1; fi
    echo "===================== Airflow $version: $result ====================="
    grep -v "^WARNING: Location" ".matrix-logs/airflow-$version.log"
    summary+=("Airflow $version: $result, $(grep -E '^=* ?[0-9]+ (passed|failed)' ".matrix-logs/airflow-$version.log" | tail -1 | tr -d '=')")
done
printf '%s\n' "${summary[@]}"
exit "$status"
