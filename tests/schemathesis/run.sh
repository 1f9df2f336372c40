#!/usr/bin/env bash
# Schemathesis (issue 31) against a real `revoker serve` on SQLite: the scanner `github`
# with the test key file, an admin token, a Revocation API token and an introspection
# client, so every documented route is on. Generated alert deliveries are signed by
# tests/schemathesis/hooks.py. Checks: no 5xx but the documented 503s, every answer's
# status, content type, headers and body as docs/openapi.json says. Bounded in time.
#   tests/schemathesis/run.sh [PATH-TO-revoker]   (default: target/debug/revoker)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-target/debug/revoker}"
examples="${SCHEMATHESIS_MAX_EXAMPLES:-60}"
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT

admin_token=schemathesis-admin-token
revocation_token=schemathesis-revocation-api-token
client=schemathesis-client:schemathesis-client-secret
# A live token for GET /v1/tokens/current's security scheme (holder_token).
HOLDER_TOKEN=$("$bin" token mint --owner schemathesis/live --ttl 2h \
    --database-url "sqlite://$dir/revoker.db" 2>/dev/null)
export HOLDER_TOKEN
"$bin" serve \
    --database-url "sqlite://$dir/revoker.db" \
    --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090 \
    --scanner "github=fixtures/keys/test-keys.json" \
    --admin-token "$admin_token" \
    --revocation-api-token "$revocation_token" \
    --introspection-client "$client" \
    --holder-rate-limit off \
    >"$dir/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    curl -fs http://127.0.0.1:18080/healthz >/dev/null 2>&1 && break
    sleep 0.1
done
if ! curl -fs http://127.0.0.1:18080/healthz >/dev/null 2>&1; then
    echo "FATAL: revoker serve did not come up on 127.0.0.1:18080 (ports 18080 and 19090 must be free):" >&2
    cat "$dir/serve.log" >&2
    exit 1
fi

export SCHEMATHESIS_HOOKS=hooks
export PYTHONPATH="$PWD/tests/schemathesis${PYTHONPATH:+:$PYTHONPATH}"
common=(--checks all --max-examples "$examples" --request-timeout 15)
status=0
echo "--- public listener"
python3 -m schemathesis.cli --no-color --config-file tests/schemathesis/schemathesis.toml run docs/openapi.json \
    --url http://127.0.0.1:18080 "${common[@]}" \
    --exclude-path-regex '^/(metrics|api/stats|dashboard|openapi\.json)$' || status=$?
echo "--- admin listener"
python3 -m schemathesis.cli --no-color --config-file tests/schemathesis/schemathesis.toml run docs/openapi.json \
    --url http://127.0.0.1:19090 "${common[@]}" \
    --include-path-regex '^/(metrics|api/stats|dashboard|openapi\.json|healthz|readyz)$' || status=$?
if grep -E 'cio_tp_[0-9A-Za-z]{36}' "$dir/serve.log"; then
    echo "FATAL: a raw token in the server's log" >&2
    status=1
fi
exit "$status"
