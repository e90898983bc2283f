#!/usr/bin/env bash
# Interop soak: corral-overlay (boringtun, examples/overlay_node.rs) against wireguard-go, the
# WireGuard authors' userspace implementation, in two network namespaces. Continuous pings in
# both directions (every 50 ms) for CORRAL_SOAK_SECS (default 180) seconds; fails if either
# direction has no reply for more than 2 s. Evidence for the boringtun version choice beyond
# boringtun-to-boringtun (tests/udp_soak.rs): the 0.7.1 report was against a non-boringtun peer.
#
# Needs root, iproute2, ping, and `apt-get install -y wireguard-go wireguard-tools`.
# Run from the workspace root after `cargo build -p corral-overlay --example overlay_node`.
set -euo pipefail
umask 077
SECS=${CORRAL_SOAK_SECS:-180}
NODE=${NODE:-target/debug/examples/overlay_node}
A=crl-wgi-$$-a
B=crl-wgi-$$-b
WG=crlwg$$
DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
hex() { base64 -d | od -An -tx1 | tr -d ' \n'; }

ip netns add "$A"
ip netns add "$B"
ip link add "cwa$$" netns "$A" type veth peer name "cwb$$" netns "$B"
ip -n "$A" addr add 198.51.100.1/24 dev "cwa$$"
ip -n "$B" addr add 198.51.100.2/24 dev "cwb$$"
for ns in "$A" "$B"; do
    ip -n "$ns" link set lo up
done
ip -n "$A" link set "cwa$$" up
ip -n "$B" link set "cwb$$" up

wg genkey >"$DIR/a.b64"
wg genkey >"$DIR/b.b64"
wg genpsk >"$DIR/psk.b64"
wg pubkey <"$DIR/a.b64" >"$DIR/a.pub.b64"
wg pubkey <"$DIR/b.b64" >"$DIR/b.pub.b64"
hex <"$DIR/a.b64" >"$DIR/a.key"

# B: wireguard-go.
WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec "$B" wireguard-go -f "$WG" \
    >"$DIR/wireguard-go.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do ip -n "$B" link show "$WG" >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$B" wg set "$WG" listen-port 51820 private-key "$DIR/b.b64" \
    peer "$(cat "$DIR/a.pub.b64")" preshared-key "$DIR/psk.b64" \
    endpoint 198.51.100.1:51820 allowed-ips 10.42.1.0/24
ip -n "$B" addr add 10.42.2.1/24 dev "$WG"
ip -n "$B" link set "$WG" mtu 1420 up
ip -n "$B" route replace 10.42.1.0/24 dev "$WG"

# A: corral's overlay.
ip netns exec "$A" "$NODE" --tun crl0 --listen 198.51.100.1:51820 \
    --private-key-file "$DIR/a.key" --address 10.42.1.1/24 --route 10.42.2.0/24 \
    --peer "$(hex <"$DIR/b.pub.b64")@198.51.100.2:51820=10.42.2.0/24" \
    --psk "$(hex <"$DIR/psk.b64")" --ready-file "$DIR/a.ready" >"$DIR/node.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -e "$DIR/a.ready" ] && break; sleep 0.1; done

echo "soak: ${SECS}s, corral-overlay (A, 10.42.1.1) <-> wireguard-go (B, 10.42.2.1)"
ip netns exec "$A" ping -D -i 0.05 -W 1 -w "$SECS" 10.42.2.1 >"$DIR/a-to-b.ping" 2>&1 &
P1=$!
ip netns exec "$B" ping -D -i 0.05 -W 1 -w "$SECS" 10.42.1.1 >"$DIR/b-to-a.ping" 2>&1 &
P2=$!
wait "$P1" || true
wait "$P2" || true

fail=0
for dir in a-to-b b-to-a; do
    # Largest gap between consecutive replies, and the first/last reply, in seconds.
    read -r max first last n < <(awk -F'[][]' '/bytes from/ {
            t = $2 + 0; if (n == 0) first = t; else if (t - prev > max) max = t - prev;
            prev = t; n++ } END { printf "%.3f %.3f %.3f %d\n", max, first, prev, n }' \
        "$DIR/$dir.ping")
    summary=$(grep -E "packets transmitted" "$DIR/$dir.ping" || true)
    echo "$dir: $n replies, max gap between replies ${max}s; $summary"
    awk -v m="$max" 'BEGIN { exit !(m > 2.0) }' && { echo "$dir: SILENT for more than 2 s"; fail=1; }
done
kill "${PIDS[1]}" 2>/dev/null || true
sleep 0.5
echo "--- overlay_node"; cat "$DIR/node.log"
echo "--- wg show"; ip netns exec "$B" wg show "$WG" || true
exit $fail
