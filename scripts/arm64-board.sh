#!/bin/bash
# arm64-board.sh: an emulated aarch64 board on this machine, for testing `fab setup`, `fab deploy`
# and the board package on the board's architecture. A Debian arm64 rootfs runs under qemu-user
# (binfmt_misc) with a stock Python and an sshd on 127.0.0.1 only; Fabric reaches it as a board.
#
#   sudo scripts/arm64-board.sh create [SUITE]   # idempotent; ~15 min the first time, seconds after
#   sudo scripts/arm64-board.sh start  [SUITE]   # sshd on 127.0.0.1:PORT, writes the inventory
#   sudo scripts/arm64-board.sh stop   [SUITE]
#        scripts/arm64-board.sh status [SUITE]   # prints the inventory path when the board answers
#
# SUITE: bullseye (Python 3.9, glibc 2.31; the default: the oldest Python the board package supports)
# or bookworm (Python 3.11, glibc 2.36). Everything lives under $ARM64_HOME/$SUITE
# (ARM64_HOME default ~/.cache/edge-llm/arm64). ARM64_SSH_PORT overrides the port (bullseye 2239,
# bookworm 2311). The board has no Python packages beyond the interpreter: `fab setup` installs them.
# CPU: qemu 7.2 has no Cortex-A55 (the Orange Pi's cores); cortex-a76 has the same ISA level
# (Armv8.2-A, dotprod, fp16; no i8mm, no SVE), so onnxruntime picks the kernels it picks on the board.
# Without root or binfmt_misc, `create` prints one line and exits 0 (the tests then skip).
set -euo pipefail

ACTION=${1:-status}
SUITE=${2:-bullseye}
case $SUITE in
bullseye) DEFAULT_PORT=2239 ;;
bookworm) DEFAULT_PORT=2311 ;;
*) echo "arm64-board.sh: suite '$SUITE' is not bullseye or bookworm" >&2; exit 2 ;;
esac
HOME_DIR=${ARM64_HOME:-$HOME/.cache/edge-llm/arm64}/$SUITE
ROOTFS=$HOME_DIR/rootfs
PORT=${ARM64_SSH_PORT:-$DEFAULT_PORT}
CPU=cortex-a76
KEY=$HOME_DIR/ssh/id_ed25519
PIDFILE=$HOME_DIR/sshd.pid
INVENTORY=$HOME_DIR/inventory.yml
log() { echo "[arm64-board $SUITE] $*"; }

binfmt_ready() { grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; }
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() {
    ssh -q -o BatchMode=yes -o ConnectTimeout=5 -o UserKnownHostsFile="$HOME_DIR/ssh/known_hosts" \
        -o IdentitiesOnly=yes -i "$KEY" -p "$PORT" root@127.0.0.1 uname -m 2>/dev/null | grep -q aarch64
}

enable_binfmt() {
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    binfmt_ready || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    binfmt_ready
}

# The guest sees the host's x86 /proc/cpuinfo under qemu-user, and onnxruntime's cpuinfo library
# segfaults on it; so the board gets the cpuinfo of its own cores: Cortex-A55 r2p0 (MIDR 0x412fd050).
write_cpuinfo() {
    local features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
    for ((i = 0; i < $(nproc --all); i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 48.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x2\nCPU part\t: 0xd05\nCPU revision\t: 0\n\n' "$i" "$features"
    done > "$HOME_DIR/cpuinfo"
}

create() {
    [ "$(id -u)" = 0 ] || { log "skipped: needs root (mmdebstrap, binfmt_misc, chroot)"; exit 0; }
    local need=()
    for p in qemu-user-static binfmt-support mmdebstrap; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "apt-get install ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
    fi
    enable_binfmt || { log "skipped: binfmt_misc cannot run aarch64 programs here (mount binfmt_misc; update-binfmts --enable qemu-aarch64)"; exit 0; }
    mkdir -p "$HOME_DIR"
    if [ ! -f "$ROOTFS/.edge-rootfs-ok" ]; then
        # built aside and moved into place when complete, so an interrupted run never leaves a half board
        rm -rf "$ROOTFS" "$ROOTFS.tmp"
        log "mmdebstrap arm64 $SUITE with python3 and openssh-server (emulated package scripts; ~15 min)"
        nice -n 10 mmdebstrap --quiet --arch=arm64 --variant=apt \
            --include=python3,python3-venv,python3-pip,openssh-server \
            --aptopt='Acquire::Retries "3"' "$SUITE" "$ROOTFS.tmp" "http://deb.debian.org/debian"
        touch "$ROOTFS.tmp/.edge-rootfs-ok"
        mv "$ROOTFS.tmp" "$ROOTFS"
    fi
    mkdir -p "$HOME_DIR/ssh" "$ROOTFS/root/.ssh" "$ROOTFS/run/sshd"
    chmod 700 "$HOME_DIR/ssh" "$ROOTFS/root/.ssh"
    [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C "arm64-$SUITE" -f "$KEY"
    [ -f "$ROOTFS/etc/ssh/ssh_host_ed25519_key" ] ||
        ssh-keygen -q -t ed25519 -N '' -C "arm64-$SUITE-host" -f "$ROOTFS/etc/ssh/ssh_host_ed25519_key"
    grep -qxF "$(cat "$KEY.pub")" "$ROOTFS/root/.ssh/authorized_keys" 2>/dev/null || cat "$KEY.pub" >> "$ROOTFS/root/.ssh/authorized_keys"
    chmod 600 "$ROOTFS/root/.ssh/authorized_keys"
    # sessions get a fresh environment; this is how every board program runs on the emulated CPU
    echo "QEMU_CPU=$CPU" > "$ROOTFS/root/.ssh/environment"
    echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$ROOTFS/etc/ssh/ssh_host_ed25519_key.pub")" > "$HOME_DIR/ssh/known_hosts"
    write_cpuinfo
    log "ready: $(chroot "$ROOTFS" /usr/bin/python3 -c 'import platform; print(platform.machine(), "Python", platform.python_version(), "glibc", platform.libc_ver()[1])')"
}

start() {
    [ "$(id -u)" = 0 ] || { log "skipped: needs root"; exit 0; }
    [ -f "$ROOTFS/.edge-rootfs-ok" ] || { echo "arm64-board.sh: no board at $ROOTFS; run: sudo $0 create $SUITE" >&2; exit 2; }
    enable_binfmt || { echo "arm64-board.sh: binfmt_misc qemu-aarch64 is not enabled" >&2; exit 2; }
    if running && answers; then log "already running (pid $(cat "$PIDFILE")), inventory $INVENTORY"; return; fi
    cat > "$INVENTORY" <<EOF
# The emulated aarch64 board ($SUITE under qemu-user, $CPU) from scripts/arm64-board.sh.
boards:
  - name: arm64-$SUITE
    host: 127.0.0.1
    port: $PORT
    user: root
    key: $KEY
    known_hosts: $HOME_DIR/ssh/known_hosts
    path: /root/edge-llm-board
    python: python3
    backend: onnxruntime
    keep_releases: 2
EOF
    # a private mount namespace holds the board's /proc (with its own cpuinfo), /sys and /dev;
    # setsid + nohup let it outlive this script; sshd -D keeps the pid in PIDFILE
    export EDGE_ROOTFS=$ROOTFS EDGE_CPUINFO=$HOME_DIR/cpuinfo EDGE_PORT=$PORT EDGE_CPU=$CPU
    setsid nohup unshare --mount --propagation private bash -c '
        r=$EDGE_ROOTFS
        mount -t proc proc "$r/proc" && mount --bind "$EDGE_CPUINFO" "$r/proc/cpuinfo"
        mount --rbind /sys "$r/sys" && mount --rbind /dev "$r/dev"
        mount -t tmpfs tmpfs "$r/tmp"
        exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 QEMU_CPU=$EDGE_CPU \
            chroot "$r" /usr/sbin/sshd -D -e -p "$EDGE_PORT" -o ListenAddress=127.0.0.1 \
            -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no -o UsePAM=no \
            -o HostKey=/etc/ssh/ssh_host_ed25519_key -o UseDNS=no -o PermitUserEnvironment=yes' \
        > "$HOME_DIR/sshd.log" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    for _ in $(seq 1 60); do
        answers && { log "sshd up on 127.0.0.1:$PORT; inventory $INVENTORY"; return; }
        running || { echo "arm64-board.sh: sshd exited; $HOME_DIR/sshd.log says:" >&2; cat "$HOME_DIR/sshd.log" >&2; exit 1; }
        sleep 2
    done
    echo "arm64-board.sh: sshd did not answer within 120 s; see $HOME_DIR/sshd.log" >&2; exit 1
}

case $ACTION in
create) create ;;
start) start ;;
stop) if running; then kill "$(cat "$PIDFILE")"; log "stopped"; fi; rm -f "$PIDFILE" ;;
status) if running && answers; then echo "$INVENTORY"; else log "not running"; exit 1; fi ;;
*) echo "usage: $0 create|start|stop|status [bullseye|bookworm]" >&2; exit 2 ;;
esac
