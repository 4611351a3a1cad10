#!/usr/bin/env bash
# Resolve the Nextflow runtime jars from Maven Central into .nextflow-lib/ (git-ignored; Maven caches in ~/.m2).
# Why this and not get.nextflow.io: build and CI machines reach Maven Central only. See tools/nextflow/README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LIB="${NXF_LIB:-$ROOT/.nextflow-lib}"
if ls "$LIB"/nextflow-*.jar >/dev/null 2>&1 && [ "${1:-}" != "--refresh" ]; then
  echo "Nextflow runtime already in $LIB"
else
  rm -rf "$LIB"
  mvn -B -q -f "$ROOT/tools/nextflow/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIB"
fi
groovies=$(ls "$LIB" | grep -c '^groovy-[0-9]' || true)
if [ "$groovies" != 1 ]; then
  echo "expected exactly one Groovy core jar in $LIB, found $groovies" >&2
  exit 1
fi
"$ROOT/tools/nextflow/nextflow" -version | grep -m1 -i version
