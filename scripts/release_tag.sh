#!/usr/bin/env bash
# The release tag of this checkout, for cloudbuild.yaml's _TAG: the commit (12 hex digits), plus
# "-dirty" when the tree differs from it (changed or new files that are not ignored), since
# `gcloud builds submit .` uploads the working tree, not the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="$(git rev-parse --short=12 HEAD)"
if [ -n "$(git status --porcelain --untracked-files=normal)" ]; then
  tag="${tag}-dirty"
fi
echo "${tag}"
