#!/bin/sh
# Runs every levee-gate test: unit tests, golden files, `nft -c` on each golden, and the
# network namespace test (lv-wan/lv-lan/lv-box with the live rule set, plus the downstream
# guard in both flavours). Needs root, nft, iproute2 and iptables; the nft tests fail, not
# skip, without them (LEVEE_SKIP_NFT=1 is the only way to skip them). About 15 s.
#
#   tests/gate/run.sh            # from the repository root
#   LEVEE_BLESS=1 tests/gate/run.sh   # rewrite the golden files, then review `git diff`
set -eu
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-gate}"
exec cargo test -p levee-gate --all-features "$@"
