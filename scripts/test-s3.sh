#!/usr/bin/env bash
# The CLI test matrix with every test repository on S3: the same tests as
# `cargo test -p baton-cli --test it`, parameterised by backend
# (BATON_TEST_BACKEND=s3), against a one-node Ceph RADOS Gateway that the
# tests start themselves (scripts/rgw.sh; installed here if missing, as root).
# Tests that edit repository files in place, use committed fixture
# directories or a tmpfs say "skipped on S3" and pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v radosgw >/dev/null 2>&1; then
    scripts/rgw.sh install
fi
BATON_TEST_BACKEND=s3 BATON_TEST_REQUIRE_S3=1 cargo test -p baton-cli --test it "$@"
