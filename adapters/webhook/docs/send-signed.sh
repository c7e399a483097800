#!/usr/bin/env bash
# Sends one signed message to a carebridge webhook account and prints the answer.
#   CAREBRIDGE_URL  the account's `listen` address plus `path`
#   SECRET_FILE     a file holding the shared secret (the same one `secret_file` names)
set -euo pipefail
URL="${CAREBRIDGE_URL:-http://127.0.0.1:8181/v1/messages}"
SECRET="$(cat "${SECRET_FILE:-/etc/carebridge/webhook-forms.secret}")"

# `id` must be unique per message: resending the same id is answered "duplicate".
BODY='{"id":"form-2024-000123","from":"+1 416 555 0199","text":"Hello, I would like to renew my prescription."}'
TS="$(date +%s)"
SIG="$(printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)"

curl --silent --show-error --fail-with-body \
  -H 'Content-Type: application/json' \
  -H "X-Carebridge-Timestamp: $TS" \
  -H "X-Carebridge-Signature: v1=$SIG" \
  --data-binary "$BODY" \
  "$URL"
