#!/usr/bin/env bash
# Container smoke test (npm run test:container).
#
# Builds the CPU variant of the Dockerfile with podman from a locally made base image (no image registry),
# runs it on 127.0.0.1 hardened as docker/compose.yaml runs it (read-only root with a /tmp tmpfs, no capabilities,
# no-new-privileges) with an API key from a mounted file (API_KEY_FILE), waits for /health/ready, checks that the
# API refuses a request without the key, sends a completion with it, checks the answer, checks the image's
# HEALTHCHECK and a graceful stop on SIGTERM (a completion in flight finishes), and removes the container.
# It never skips: when podman cannot be installed or cannot run, it fails with the reason.
#
# Environment (all optional):
#   CONTAINER_STATE_DIR   podman state, base-image cache, configs   (default: $TMPDIR or /tmp, + /chameleon-podman)
#   SMOKE_IMAGE           tag of the image under test               (default: localhost/chameleon-serve:cpu-smoke)
#   SMOKE_READY_TIMEOUT   seconds to wait for /health/ready         (default: 300)
#   SMOKE_NICE            niceness of the image build               (default: 10)
#   SMOKE_KEEP_IMAGE=0    remove the image at the end               (default: keep, layers cache the next run)
#   SMOKE_REBUILD_BASE=1  rebuild the cached base images
set -Eeuo pipefail

export PATH="$PATH:/usr/sbin:/sbin"  # debootstrap and friends live there
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${CONTAINER_STATE_DIR:-${TMPDIR:-/tmp}/chameleon-podman}
IMAGE=${SMOKE_IMAGE:-localhost/chameleon-serve:cpu-smoke}
READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-300}
NICE=${SMOKE_NICE:-10}
NAME=chameleon-smoke-$$
T0=$(date +%s)
CURRENT_STEP=start

step() { CURRENT_STEP=$*; printf '\n==> [container-smoke] %s (t=%ss)\n' "$*" "$(( $(date +%s) - T0 ))"; }
info() { printf '    %s\n' "$*"; }
fail() {
  printf '\n[container-smoke] FAIL at step "%s": %s\n' "$CURRENT_STEP" "$*" >&2
  exit 1
}
on_err() {
  [ "$BASH_SUBSHELL" -eq 0 ] || exit "$1"  # inside $(...): the outer command reports it
  fail "command failed (exit $1, line $2): $3"
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR
# podman without systemd logs an error for each container with a HEALTHCHECK ("unable to get systemd connection"):
# it cannot schedule the periodic checks, which this test runs by hand (step 8). Filter that noise only.
pod() {
  local rc=0
  podman "$@" 2>"$STATE/podman.err" || rc=$?
  grep -v 'unable to get systemd connection' "$STATE/podman.err" >&2 || true
  return "$rc"
}
cleanup() {
  if command -v podman >/dev/null 2>&1 && [ -n "${CONTAINERS_CONF:-}" ]; then
    podman rm -f -t 2 "$NAME" >/dev/null 2>&1 || true  # quiet: errors here would hide the failure reason
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------------------------
step "1/9 podman available"
PKGS=(podman buildah runc debootstrap uidmap slirp4netns fuse-overlayfs)
missing=()
for bin in podman runc debootstrap; do command -v "$bin" >/dev/null 2>&1 || missing+=("$bin"); done
if [ ${#missing[@]} -gt 0 ]; then
  info "missing: ${missing[*]}; installing ${PKGS[*]} with apt-get"
  command -v apt-get >/dev/null 2>&1 || fail "podman is not installed and apt-get is not available to install it"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
      || fail "podman is not installed and installing it needs root (not root, no password-less sudo)"
    SUDO=(sudo -n)
  fi
  "${SUDO[@]}" apt-get update -qq >/dev/null || fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null \
    || fail "apt-get install ${PKGS[*]} failed"
fi
[ "$(id -u)" -eq 0 ] || fail "this test runs rootful podman (debootstrap and podman import need root); run it as root"
info "$(podman --version), runc $(runc --version | head -n1 | awk '{print $3}')"

# ---------------------------------------------------------------------------------------------------------------
step "2/9 podman configuration (state in one folder)"
mkdir -p "$STATE"/{storage,runroot,libpod,netconf,tmp,conf}
cat >"$STATE/conf/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$STATE/libpod"
network_config_dir = "$STATE/netconf"
EOF
cat >"$STATE/conf/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$STATE/runroot"
EOF
export CONTAINERS_CONF="$STATE/conf/containers.conf" CONTAINERS_STORAGE_CONF="$STATE/conf/storage.conf"
export TMPDIR="$STATE/tmp"
info "state: $STATE"
if ! out=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}' 2>&1); then
  fail "podman cannot run here: $out"
fi
info "runtime/storage: $out"

# ---------------------------------------------------------------------------------------------------------------
step "3/9 Debian base image (debootstrap, cached)"
CODENAME=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
CODENAME=${CODENAME:-bookworm}
DEBIAN_BASE=localhost/debian-base:$CODENAME
if [ "${SMOKE_REBUILD_BASE:-0}" != 1 ] && podman image exists "$DEBIAN_BASE"; then
  info "cached: $DEBIAN_BASE"
else
  # The mirror apt already uses on this machine, if any (debootstrap's default otherwise).
  MIRROR=$(grep -hs -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
             | grep -v -E 'security|updates|backports' | grep -o -E 'https?://[^ ]+' | head -n1 || true)
  rm -rf "$STATE/rootfs"
  info "debootstrap --variant=minbase $CODENAME ${MIRROR:-(default mirror)}"
  nice -n "$NICE" debootstrap --variant=minbase "$CODENAME" "$STATE/rootfs" ${MIRROR:+"$MIRROR"} \
    >"$STATE/debootstrap.log" 2>&1 || fail "debootstrap failed; last lines: $(tail -n 5 "$STATE/debootstrap.log")"
  rm -rf "$STATE"/rootfs/var/lib/apt/lists/* "$STATE"/rootfs/var/cache/apt/archives/*.deb
  tar -C "$STATE/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$DEBIAN_BASE" >"$STATE/import.log" 2>&1 \
    || fail "podman import failed: $(tail -n 5 "$STATE/import.log")"
  rm -rf "$STATE/rootfs"
  info "imported: $DEBIAN_BASE"
fi

# ---------------------------------------------------------------------------------------------------------------
step "4/9 Node base image (this machine's node + npm, cached)"
NODE_BIN=$(readlink -f "$(command -v node)") || fail "node is not installed on this machine"
NODE_VERSION=$("$NODE_BIN" --version)
[ "${NODE_VERSION#v}" != "$NODE_VERSION" ] && [ "$(echo "${NODE_VERSION#v}" | cut -d. -f1)" -ge 20 ] \
  || fail "node >= 20 is needed for the base image, found $NODE_VERSION"
NPM_DIR=$(cd "$(dirname "$(readlink -f "$(command -v npm)")")/.." && pwd) || fail "npm is not installed on this machine"
[ -f "$NPM_DIR/bin/npm-cli.js" ] || fail "cannot find npm's package folder (looked at $NPM_DIR)"
NODE_BASE=localhost/chameleon-node-base:$NODE_VERSION
if [ "${SMOKE_REBUILD_BASE:-0}" != 1 ] && podman image exists "$NODE_BASE"; then
  info "cached: $NODE_BASE"
else
  ctx="$STATE/node-base-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  install -m 0755 "$NODE_BIN" "$ctx/node"  # mode set here: a chmod in the image would copy the binary again
  cp -a "$NPM_DIR" "$ctx/npm"
  cat >"$ctx/Containerfile" <<EOF
FROM $DEBIAN_BASE
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && node --version && npm --version
CMD ["node"]
EOF
  nice -n "$NICE" podman build -t "$NODE_BASE" -f "$ctx/Containerfile" "$ctx" >"$STATE/node-base.log" 2>&1 \
    || fail "building $NODE_BASE failed: $(tail -n 10 "$STATE/node-base.log")"
  rm -rf "$ctx"
  info "built: $NODE_BASE"
fi

# ---------------------------------------------------------------------------------------------------------------
step "5/9 build the CPU image from the Dockerfile"
[ -f "$ROOT/models/default/manifest.json" ] || fail "models/default/manifest.json is missing: no model package to put in the image"
BUILD_ARGS=(
  --build-arg "BASE_IMAGE=$NODE_BASE"
  --build-arg "NODE_IMAGE=$NODE_BASE"
  --build-arg ONNXRUNTIME_NODE_INSTALL=skip
  --build-arg DEVICE=cpu
)
# Sandboxes that intercept TLS: hand this machine's CA bundle to the build (it does not end up in the image).
CA=${NODE_EXTRA_CA_CERTS:-}
if [ -n "$CA" ] && [ -f "$CA" ]; then
  BUILD_ARGS+=(-v "$CA:/etc/ssl/extra-ca.crt:ro" --build-arg NODE_EXTRA_CA_CERTS=/etc/ssl/extra-ca.crt)
  info "extra CA bundle mounted for the build"
fi
b0=$(date +%s)
nice -n "$NICE" podman build --format docker --layers "${BUILD_ARGS[@]}" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" \
  >"$STATE/build.log" 2>&1 || { tail -n 40 "$STATE/build.log" >&2; fail "podman build failed (log above)"; }
grep -E 'STEP [0-9]+/[0-9]+: (FROM|RUN|COPY)|Using cache|^COMMIT' "$STATE/build.log" | cut -c1-150 | sed 's/^/    /' || true
info "build took $(( $(date +%s) - b0 ))s"
SIZE=$(podman image inspect "$IMAGE" --format '{{.Size}}')
info "image $IMAGE: $(( SIZE / 1000 / 1000 )) MB"

# ---------------------------------------------------------------------------------------------------------------
step "6/9 run the container on 127.0.0.1 (hardened, with an API key) and wait for /health/ready"
PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
# The key as a mounted secret file, readable by the image's user (uid 10001).
KEY=$(node -e 'console.log(require("crypto").randomBytes(32).toString("base64url"))')
printf '%s\n' "$KEY" >"$STATE/api-key"
chmod 0644 "$STATE/api-key"
AUTH="authorization: Bearer $KEY"
# --health-interval=disable: no periodic health checks (podman schedules them with systemd); step 8 runs one.
# MAX_WAIT_MS=1500: a request waits up to 1.5 s in the batch window, so that step 9 can send SIGTERM while one is
# admitted and not yet answered, whatever the speed of the model.
pod run -d --name "$NAME" -p "127.0.0.1:$PORT:8080" --health-interval=disable -e MAX_WAIT_MS=1500 \
  --read-only --tmpfs /tmp:size=64m --cap-drop=ALL --security-opt=no-new-privileges \
  -v "$STATE/api-key:/run/secrets/api-key:ro" -e API_KEY_FILE=/run/secrets/api-key "$IMAGE" >/dev/null
info "container $NAME on 127.0.0.1:$PORT"
URL="http://127.0.0.1:$PORT"
deadline=$(( $(date +%s) + READY_TIMEOUT ))
ready=""
while :; do
  state=$(podman inspect -f '{{.State.Status}}' "$NAME" 2>/dev/null || echo gone)
  if [ "$state" != running ]; then
    podman logs --tail 40 "$NAME" >&2 || true
    fail "container is $state before it became ready (logs above)"
  fi
  if ready=$(curl -fsS -m 3 "$URL/health/ready" 2>/dev/null); then break; fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    podman logs --tail 40 "$NAME" >&2 || true
    fail "/health/ready did not answer 200 within ${READY_TIMEOUT}s (logs above)"
  fi
  sleep 1
done
info "ready: $ready"
info "live: $(curl -fsS -m 3 "$URL/health/live")"
CODE=$(curl -sS -m 3 -o /dev/null -w '%{http_code}' "$URL/v1/models")
[ "$CODE" = 401 ] || fail "GET /v1/models without the key answered HTTP $CODE (401 expected)"
info "without the key: 401"
MODELS=$(curl -fsS -m 3 -H "$AUTH" "$URL/v1/models") || fail "GET /v1/models failed"
info "models: $MODELS"
MODEL=$(printf '%s' "$MODELS" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const id=JSON.parse(s).data?.[0]?.id; if(typeof id!=="string"){console.log("no model id in /v1/models");process.exit(1)} console.log(id)})') \
  || fail "$MODEL"

# ---------------------------------------------------------------------------------------------------------------
step "7/9 POST /v1/completions"
BODY=$(printf '{"model":"%s","prompt":"The old ship sailed","max_tokens":16,"temperature":0.8,"seed":7}' "$MODEL")
RESP=$(curl -sS -m 60 -w '\n%{http_code}' -H "$AUTH" -H 'content-type: application/json' -d "$BODY" "$URL/v1/completions") \
  || fail "request failed: $RESP"
CODE=${RESP##*$'\n'}
RESP=${RESP%$'\n'*}
[ "$CODE" = 200 ] || fail "POST /v1/completions answered HTTP $CODE: $RESP"
info "response: $RESP"
CHECK=$(printf '%s' "$RESP" | node -e '
  let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
    let r; try { r = JSON.parse(s) } catch (e) { console.log("not JSON: " + e.message); process.exit(1) }
    const c = r.choices && r.choices[0];
    if (!c || typeof c.text !== "string") { console.log("choices[0].text is not a string"); process.exit(1) }
    const n = r.usage && r.usage.completion_tokens;
    if (!(Number.isInteger(n) && n > 0)) { console.log("usage.completion_tokens is not > 0: " + n); process.exit(1) }
    console.log("ok: " + n + " completion tokens, text " + JSON.stringify(c.text) + ", finish_reason " + c.finish_reason);
  })') || fail "unexpected completion: $CHECK"
info "$CHECK"

# ---------------------------------------------------------------------------------------------------------------
step "8/9 the image's HEALTHCHECK passes"
hc=$(podman inspect -f '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}' "$NAME" 2>/dev/null || true)
[ -n "$hc" ] || fail "the image has no HEALTHCHECK"
podman healthcheck run "$NAME" >/dev/null 2>&1 || fail "HEALTHCHECK command failed in the running container: $hc"
info "healthy ($hc)"

# ---------------------------------------------------------------------------------------------------------------
step "9/9 graceful stop on SIGTERM with a completion in flight"
# SIGTERM goes out once the request is admitted (queued in the batch window or running); it must still be answered.
# As many tokens as the package's context allows (prompt + completion <= dims.context).
CONTEXT=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).dims.context)' "$ROOT/models/default/manifest.json")
LONG_TOKENS=$(( CONTEXT > 48 ? CONTEXT - 24 : 24 ))
LONG=$(printf '{"model":"%s","prompt":"Once upon a time","max_tokens":%d,"temperature":1,"seed":11}' "$MODEL" "$LONG_TOKENS")
curl -sS -m 120 -o "$STATE/inflight.json" -w '%{http_code}' -H "$AUTH" -H 'content-type: application/json' -d "$LONG" \
  "$URL/v1/completions" >"$STATE/inflight.code" 2>"$STATE/inflight.err" &
CURL_PID=$!
inflight=0
for _ in $(seq 1 300); do
  if curl -fsS -m 2 -H "$AUTH" "$URL/metrics" 2>/dev/null | grep -qE '^chameleon_(queue_depth|batch_rows_in_flight) [1-9]'; then inflight=1; break; fi
  kill -0 "$CURL_PID" 2>/dev/null || break
  sleep 0.02
done
s0=$(date +%s)
pod stop -t 30 "$NAME" >/dev/null
took=$(( $(date +%s) - s0 ))
wait "$CURL_PID" || true
EXIT=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
podman logs --tail 4 "$NAME" 2>&1 | cut -c1-200 | sed 's/^/    log: /'
[ "$EXIT" = 0 ] || fail "container exited with code $EXIT after SIGTERM (0 expected; 137 means it had to be killed)"
info "stopped in ${took}s, exit code 0"
code=$(cat "$STATE/inflight.code" 2>/dev/null || true)
[ "$code" = 200 ] || fail "the completion sent before SIGTERM was not answered (HTTP ${code:-none}: $(cat "$STATE/inflight.err" "$STATE/inflight.json" 2>/dev/null | head -c 300))"
# Did it finish after SIGTERM, i.e. was it drained? The server's JSON log tells the order.
podman logs "$NAME" >"$STATE/container.log" 2>&1 || true
DRAINED=$(node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").flatMap((l) => { try { return [JSON.parse(l)] } catch { return [] } });
  const term = lines.findIndex((l) => l.msg === "shutting down");
  const ids = new Set(lines.filter((l) => l.req && l.req.url === "/v1/completions").map((l) => l.reqId));
  console.log(term < 0 ? -1 : lines.slice(term).filter((l) => ids.has(l.reqId) && l.res && l.res.statusCode === 200).length);
' "$STATE/container.log")
n=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).usage.completion_tokens)' "$STATE/inflight.json")
case "$DRAINED" in
  -1) fail "the server did not log its shutdown after SIGTERM" ;;
  0) fail "the completion finished before SIGTERM arrived, so the drain was not tested" ;;
  *) info "drained: the completion admitted before SIGTERM was answered after it (HTTP 200, $n tokens)" ;;
esac
pod rm -f -t 2 "$NAME" >/dev/null
if [ "${SMOKE_KEEP_IMAGE:-1}" = 0 ]; then podman rmi -f "$IMAGE" >/dev/null || true; fi

# Build-cache images of earlier runs: keep a day's worth, drop older ones so the state folder does not grow.
podman image prune -f --filter until=24h >/dev/null 2>&1 || true
podman images --filter dangling=false --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | sed 's/^/    image: /'
printf '\n[container-smoke] PASS: %s built, served a completion, stopped cleanly (%ss)\n' "$IMAGE" "$(( $(date +%s) - T0 ))"
