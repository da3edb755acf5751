#!/usr/bin/env bash
# The main job: set up, fit circuits/news.yaml on BBC News (rules -> CRF -> spaCy en_core_web_md), then evaluate it
# on the unseen BBC test articles (calls avoided, entity-F1 vs the mamabear, wall-time ratio, per node).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate 2>/dev/null || true
babybear corpus bbc --out data
babybear fit circuits/news.yaml --corpus data/bbc.train.txt --out trained/news
babybear eval trained/news --corpus data/bbc.test.txt
