#!/usr/bin/env bash
# Docker for `sam local` (scripts/sam-local.sh):
#
#   scripts/docker.sh start        # a Docker daemon that answers: the machine's,
#                                  # else Debian's docker.io installed and
#                                  # /usr/sbin/dockerd started in the background
#   scripts/docker.sh emulation ARCH   # runs ARCH (arm64|x86_64) containers:
#                                  # nothing on a host of that architecture, else
#                                  # QEMU user mode registered with binfmt_misc
#   scripts/docker.sh image ARCH   # the image `sam local` needs for provided.al2023
#                                  # on ARCH: pulled, else a stand-in built here
#   scripts/docker.sh probe ARCH   # that image runs, and SAM can wait for it
#   scripts/docker.sh stop         # stops only the dockerd this script started
#                                  # (and unregisters the binfmt entry it added)
#   scripts/docker.sh purge        # removes the stand-in and SAM's images built on it
#
# Logs go to stderr; every wait is bounded; a step that cannot be done fails
# with the reason (exit 1), it never skips.
#
# The daemon. A daemon that already answers (Docker Desktop, a systemd
# service) is used as it is and never stopped here. Otherwise, as root, the
# script installs `docker.io` from the machine's Debian/Ubuntu mirror when
# dockerd is missing (its service start is often blocked in containers and
# VMs without systemd) and starts `/usr/sbin/dockerd --userland-proxy=false`
# itself: logs in .local/dockerd.log, pid in .local/dockerd.pid. Without the
# userland proxy a published port refuses connections until the container
# listens, which is what SAM waits for; with it, the proxy accepts at once and
# SAM gives up after ~1 s of retries ("No response from invoke container"),
# shorter than the Lambda emulator takes to start under QEMU.
#
# The image. SAM 1.170 runs a provided.al2023 zip function in
# public.ecr.aws/lambda/provided:al2023-<arch>, to which it adds its emulator
# (aws-lambda-rie) in a `-rapid-` image of its own. The official image is
# pulled when the registry answers (a developer's machine). When it cannot be
# pulled, a stand-in with that name is built: a Debian bookworm root file
# system (`debootstrap --foreign --variant=minbase`, from the Debian mirror
# the machine's apt uses; DEBIAN_MIRROR overrides) with what SAM's image build
# and the functions need (/bin/sh, mv, chmod, glibc, libgcc_s), WORKDIR
# /var/task and the LAMBDA_TASK_ROOT / LAMBDA_RUNTIME_DIR / PATH of the
# official image. It is Debian, not Amazon Linux 2023: fine for these static-ish
# Rust binaries (they need glibc 2.17+ and nothing else), not a substitute for
# a test on the real image. It carries the label support-chat.stand-in=1, and
# every `image` run tries the pull again first, so the official image
# replaces it as soon as it can be had.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$ROOT/.local"
PIDFILE="$LOCAL/dockerd.pid"
LOGFILE="$LOCAL/dockerd.log"
BINFMT_MARK="$LOCAL/binfmt-registered"
STANDIN_LABEL=support-chat.stand-in
# Bumped whenever build_standin changes: an older stand-in is rebuilt.
STANDIN_VERSION=2
START_SECS=${DOCKER_START_TIMEOUT:-60}
PULL_SECS=${DOCKER_PULL_TIMEOUT:-300}
SUITE=${DEBIAN_SUITE:-bookworm}

log() { printf '[docker.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

apt_install() {
  is_root || die "installing $* needs root (apt-get); install it yourself or run as root"
  command -v apt-get >/dev/null || die "no apt-get on this machine: install $* yourself"
  log "installing $* from the distribution (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$LOCAL"
  # Package lists this script refreshed within the hour are used as they
  # are (one `apt-get update` per run, not one per package); an install that
  # fails with them is retried after an update.
  local stamp="$LOCAL/apt-updated" fresh=
  [ -n "$(find "$stamp" -mmin -60 2>/dev/null)" ] && fresh=1
  if ! { { [ -n "$fresh" ] && timeout 600 apt-get install -y -qq --no-install-recommends "$@"; } \
      || { timeout 300 apt-get update -qq && touch "$stamp" \
           && timeout 600 apt-get install -y -qq --no-install-recommends "$@"; }; } \
      >"$LOCAL/apt.log" 2>&1 </dev/null 9>&-; then
    tail -n 30 "$LOCAL/apt.log" >&2
    die "apt-get install $* failed (log: $LOCAL/apt.log)"
  fi
}

daemon_answers() { timeout 10 docker info >/dev/null 2>&1; }

# The recorded pid is alive and still dockerd (not a recycled pid).
our_dockerd() {
  [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$(cat "$PIDFILE")/cmdline" 2>/dev/null | grep -q dockerd
}

# fd 9: this script's lock (one start, stop or image build at a time).
lock() {
  mkdir -p "$LOCAL" 2>/dev/null && { exec 9>"$LOCAL/$1"; } 2>/dev/null \
    || die "cannot write $LOCAL/$1 (run as the checkout's owner, or as root)"
  flock -w "$2" 9 || die "another docker.sh holds $LOCAL/$1"
}

start() {
  if command -v docker >/dev/null && daemon_answers; then
    if our_dockerd; then log "dockerd (pid $(cat "$PIDFILE")) answers"; else log "using the running Docker daemon"; fi
    return
  fi
  if ! is_root; then
    local why="no docker client"
    command -v docker >/dev/null && why=$({ docker info 2>&1 || true; } | tail -n1)
    die "no Docker daemon answers ($why); installing or starting one needs root: start Docker yourself, or run as root"
  fi
  lock docker.lock 120
  command -v docker >/dev/null || [ -x /usr/sbin/dockerd ] || apt_install docker.io
  command -v docker >/dev/null || die "no docker client on PATH after installing docker.io"
  if daemon_answers; then
    if our_dockerd; then log "dockerd (pid $(cat "$PIDFILE")) answers"; else log "using the running Docker daemon"; fi
    return
  fi
  [ -x /usr/sbin/dockerd ] || apt_install docker.io
  is_root || die "no Docker daemon answers (docker info: $(docker info 2>&1 | tail -n1)); starting one needs root: start Docker yourself"

  # cgroups and overlay must be there for any container to run.
  [ -d /sys/fs/cgroup ] && [ -n "$(ls -A /sys/fs/cgroup 2>/dev/null)" ] \
    || die "no cgroup file system under /sys/fs/cgroup: Docker cannot run containers here"

  log "starting /usr/sbin/dockerd --userland-proxy=false (log: $LOGFILE)"
  # setsid: its own session, so the caller's terminal signals do not reach it;
  # fd 9 (our lock) must not be inherited, or the lock would outlive us.
  setsid /usr/sbin/dockerd --userland-proxy=false >"$LOGFILE" 2>&1 </dev/null 9>&- &
  local pid=$! i
  printf '%s\n' "$pid" >"$PIDFILE"
  for i in $(seq 1 $((START_SECS * 5))); do
    if daemon_answers; then
      log "dockerd ready (pid $pid, $(docker version --format '{{.Server.Version}}' 2>/dev/null))"
      return
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  tail -n 30 "$LOGFILE" >&2 || true
  rm -f "$PIDFILE"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    die "dockerd did not answer within ${START_SECS}s (its log above: $LOGFILE); Docker cannot run on this machine as it is"
  fi
  wait "$pid" 2>/dev/null && i=0 || i=$?
  die "dockerd exited (status $i; its log above: $LOGFILE); Docker cannot run on this machine as it is"
}

stop() {
  [ -s "$PIDFILE" ] || [ -s "$BINFMT_MARK" ] || return 0
  lock docker.lock 120
  if our_dockerd; then
    local pid i
    pid=$(cat "$PIDFILE")
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # dockerd stops its containers (10 s grace each) and containerd first.
    for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "dockerd did not exit in 30 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PIDFILE"
  if [ -s "$BINFMT_MARK" ]; then
    local entry
    entry=$(cat "$BINFMT_MARK")
    if [ -e "/proc/sys/fs/binfmt_misc/$entry" ]; then
      log "unregistering binfmt_misc entry $entry"
      echo -1 >"/proc/sys/fs/binfmt_misc/$entry" || log "could not unregister $entry"
    fi
    rm -f "$BINFMT_MARK"
  fi
}

# ------------------------------------------------------------ architecture --

host_arch() {
  case "$(uname -m)" in
    x86_64|amd64) echo x86_64 ;;
    aarch64|arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}

check_arch() {
  case "$1" in
    arm64|x86_64) ;;
    *) die "architecture must be arm64 or x86_64, not '$1'" ;;
  esac
}

qemu_name() { [ "$1" = arm64 ] && echo aarch64 || echo x86_64; }
deb_arch() { [ "$1" = arm64 ] && echo arm64 || echo amd64; }

# Runs a static probe of ARCH in a throwaway container: 0 if the kernel can.
can_run() {
  local arch=$1
  [ "$arch" = "$(host_arch)" ] && return 0
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$(qemu_name "$arch")" ] \
    && grep -q '^enabled' "/proc/sys/fs/binfmt_misc/qemu-$(qemu_name "$arch")" \
    && grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/qemu-$(qemu_name "$arch")"
}

emulation() {
  local arch=$1 q conf entry
  check_arch "$arch"
  if can_run "$arch"; then
    [ "$arch" = "$(host_arch)" ] || log "$arch binaries run through binfmt_misc (qemu-$(qemu_name "$arch"))"
    return
  fi
  is_root || die "running $arch containers on $(host_arch) needs QEMU registered with binfmt_misc (root)"
  q=$(qemu_name "$arch")
  command -v "qemu-$q-static" >/dev/null || apt_install qemu-user-static
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    log "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || die "cannot mount binfmt_misc (the kernel lacks CONFIG_BINFMT_MISC or this container may not mount it): $arch containers cannot run here"
  fi
  entry="qemu-$q"
  if [ -e "/proc/sys/fs/binfmt_misc/$entry" ]; then
    # Registered without F (fix binary): the interpreter is not visible
    # inside containers. Re-register it with the package's flags.
    log "binfmt_misc entry $entry lacks the F flag: registering it again"
    echo -1 >"/proc/sys/fs/binfmt_misc/$entry" || die "cannot unregister $entry"
  fi
  conf=/usr/lib/binfmt.d/$entry.conf
  [ -s "$conf" ] || die "$conf missing (qemu-user-static's binfmt definition)"
  grep -q ':[A-Z]*F[A-Z]*$' "$conf" || die "$conf does not set the F flag: containers could not find the interpreter"
  log "registering $entry with binfmt_misc ($conf)"
  tr -d '\n' <"$conf" >/proc/sys/fs/binfmt_misc/register || die "binfmt_misc refused $conf"
  printf '%s\n' "$entry" >"$BINFMT_MARK"
  can_run "$arch" || die "$entry registered but not enabled"
}

# ------------------------------------------------------------------ image ---

image_name() { echo "public.ecr.aws/lambda/provided:al2023-$1"; }

standin_version() {
  docker image inspect --format "{{ index .Config.Labels \"$STANDIN_LABEL\" }}" "$1" 2>/dev/null || true
}
is_standin() { [ -n "$(standin_version "$1")" ]; }

# The Debian mirror this machine's apt uses (deb.debian.org when none is found).
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v '^\s*#' | grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v -- '-security' | head -n1 | tr -d ' ' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build_standin() {
  local arch=$1 name tmp mirror rootfs t0
  name=$(image_name "$arch")
  command -v debootstrap >/dev/null || apt_install debootstrap
  is_root || die "building the stand-in image needs root (debootstrap)"
  mirror=$(debian_mirror)
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/lambda-standin.XXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  rootfs="$tmp/rootfs"
  t0=$(date +%s)
  log "building a stand-in $name: Debian $SUITE minbase ($(deb_arch "$arch")) from $mirror"
  # --foreign: unpack only. The second stage (maintainer scripts) would run
  # arm64 code under QEMU for minutes and adds nothing a Lambda bootstrap uses.
  if ! timeout 900 debootstrap --foreign --arch="$(deb_arch "$arch")" --variant=minbase \
      "$SUITE" "$rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    die "debootstrap from $mirror failed (set DEBIAN_MIRROR to a reachable Debian mirror)"
  fi
  rm -rf "$rootfs/debootstrap" "$rootfs/var/cache/apt/archives/"*.deb \
    "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/info" "$rootfs/usr/share/locale"
  # What the unrun maintainer scripts would have created and a process may look up.
  cp "$rootfs/usr/share/base-passwd/passwd.master" "$rootfs/etc/passwd"
  cp "$rootfs/usr/share/base-passwd/group.master" "$rootfs/etc/group"
  # The official image trusts the public CAs (the AWS SDK reads the system's);
  # the unconfigured ca-certificates package would not have built its bundle.
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  mkdir -p "$rootfs/var/task" "$rootfs/var/runtime" "$rootfs/opt" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  for f in sh mv chmod; do
    [ -e "$rootfs/bin/$f" ] || [ -e "$rootfs/usr/bin/$f" ] || die "the stand-in lacks $f (debootstrap changed?)"
  done
  tar -C "$rootfs" -cf "$tmp/rootfs.tar" .
  rm -rf "$rootfs"
  cat >"$tmp/Dockerfile" <<EOF
FROM scratch
ADD rootfs.tar /
WORKDIR /var/task
ENV LAMBDA_TASK_ROOT=/var/task LAMBDA_RUNTIME_DIR=/var/runtime PATH=/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin LANG=C.UTF-8 TZ=:/etc/localtime
LABEL $STANDIN_LABEL=$STANDIN_VERSION org.opencontainers.image.description="Stand-in for $name: Debian $SUITE minbase, not Amazon Linux (scripts/docker.sh)"
EOF
  # FROM scratch with --platform gives the image the architecture SAM asks
  # for (`docker import` ignores --platform on a non-experimental daemon).
  if ! DOCKER_BUILDKIT=0 timeout 600 docker build -q --platform "linux/$(deb_arch "$arch")" -t "$name" "$tmp" \
      >"$tmp/build.log" 2>&1; then
    tail -n 30 "$tmp/build.log" >&2
    die "docker build of the stand-in $name failed"
  fi
  rm -rf "$tmp"
  trap - EXIT
  log "stand-in $name built in $(( $(date +%s) - t0 ))s ($(docker image inspect --format '{{.Size}}' "$name" | awk '{printf "%d MB", $1/1e6}'))"
}

image() {
  local arch=$1 name before after
  check_arch "$arch"
  name=$(image_name "$arch")
  lock docker-image.lock 1200
  daemon_answers || die "no Docker daemon answers (scripts/docker.sh start)"
  before=$(docker image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
  if [ -n "$before" ] && ! is_standin "$name"; then
    log "$name: present (official)"
    return
  fi
  log "pulling $name"
  if timeout "$PULL_SECS" docker pull --platform "linux/$(deb_arch "$arch")" "$name" >"$LOCAL/docker-pull.log" 2>&1; then
    log "$name: pulled (official)"
  elif [ -n "$before" ] && [ "$(standin_version "$name")" = "$STANDIN_VERSION" ]; then
    log "$name cannot be pulled ($(tail -n1 "$LOCAL/docker-pull.log")): keeping the stand-in already built"
  else
    log "$name cannot be pulled ($(tail -n1 "$LOCAL/docker-pull.log"))"
    build_standin "$arch"
  fi
  after=$(docker image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
  [ -n "$after" ] || die "no image $name after pulling and building"
  if [ "$before" != "$after" ]; then
    # SAM reuses its `-rapid-` image if one exists: built on the previous
    # base, it would hide the new one.
    docker rmi -f "public.ecr.aws/lambda/provided:al2023-rapid-$arch" >/dev/null 2>&1 || true
  fi
}

# The image runs here as SAM will run it: its shell reports the architecture
# (under QEMU when foreign), and a published port refuses connections until
# something listens in the container. With Docker's userland proxy the port
# accepts at once, SAM's three quick retries fail while the emulator is still
# starting under QEMU, and it reports "No response from invoke container".
probe() {
  local arch=$1 name want out cid port
  check_arch "$arch"
  name=$(image_name "$arch")
  want=$(qemu_name "$arch")
  out=$(timeout 120 docker run --rm --platform "linux/$(deb_arch "$arch")" --entrypoint /bin/sh "$name" \
    -c 'uname -m; mv --version >/dev/null && chmod --version >/dev/null && echo ok' 2>&1) \
    || die "$name does not run here: $out"
  [ "$out" = "$(printf '%s\nok' "$want")" ] || die "$name ran, but said '$out' (wanted $want, then ok)"
  log "$name runs: $want"
  [ "$arch" = "$(host_arch)" ] && return
  cid=$(timeout 60 docker run -d --rm --platform "linux/$(deb_arch "$arch")" -p 127.0.0.1::8080 \
    --entrypoint /bin/sleep "$name" 60) || die "cannot start a container with a published port"
  port=$(docker port "$cid" 8080/tcp 2>/dev/null | head -n1 | sed 's/.*://')
  if [ -n "$port" ] && timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
    docker rm -f "$cid" >/dev/null 2>&1 || true
    die "the Docker daemon answers published ports itself (its userland proxy): under QEMU, SAM would give up before the Lambda emulator listens. Set \"userland-proxy\": false in /etc/docker/daemon.json and restart Docker, or stop it and let this script start its own"
  fi
  docker rm -f "$cid" >/dev/null 2>&1 || true
  log "published ports refuse until the container listens (no userland proxy)"
}

purge() {
  daemon_answers || die "no Docker daemon answers"
  local arch name
  for arch in arm64 x86_64; do
    name=$(image_name "$arch")
    if is_standin "$name"; then
      log "removing the stand-in $name and SAM's image built on it"
      docker rmi -f "public.ecr.aws/lambda/provided:al2023-rapid-$arch" >/dev/null 2>&1 || true
      docker rmi -f "$name" >/dev/null || true
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  emulation) [ $# -eq 2 ] || { echo "usage: $0 emulation arm64|x86_64" >&2; exit 2; }; emulation "$2" ;;
  image) [ $# -eq 2 ] || { echo "usage: $0 image arm64|x86_64" >&2; exit 2; }; image "$2" ;;
  probe) [ $# -eq 2 ] || { echo "usage: $0 probe arm64|x86_64" >&2; exit 2; }; probe "$2" ;;
  purge) purge ;;
  *) echo "usage: $0 start|stop|emulation ARCH|image ARCH|probe ARCH|purge" >&2; exit 2 ;;
esac
