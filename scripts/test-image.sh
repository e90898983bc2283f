#!/usr/bin/env bash
# Builds the local test image corral-test/busybox:latest from the static busybox of Debian's
# busybox-static package, with `docker import` (no registry is used; nothing is pulled).
set -euo pipefail
IMAGE=${1:-corral-test/busybox:latest}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi
BUSYBOX=$(command -v busybox)
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/tmp" "$ROOT/www"
cp "$(readlink -f "$BUSYBOX")" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$ROOT/bin/$applet"
done
echo "hello from corral" > "$ROOT/www/index.html"
tar -C "$ROOT" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$IMAGE" >/dev/null
echo "built $IMAGE"
