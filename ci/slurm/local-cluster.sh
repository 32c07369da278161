#!/usr/bin/env bash
# A single-node SLURM cluster on localhost (Debian's slurm-wlm + munge), configured from the files
# beside this script. Used by tests/test_slurm.py; also a way to try workflow/profiles/slurm by hand.
# Needs root (apt-get, /etc/slurm, the daemons).
#
#   ci/slurm/local-cluster.sh install           apt-get install slurm-wlm munge, when missing
#   ci/slurm/local-cluster.sh start STATE_DIR   install if needed, write /etc/slurm/{slurm,cgroup}.conf
#                                               (state, logs and pid files go to STATE_DIR), start
#                                               munged (unless one already answers), slurmctld and
#                                               slurmd; wait until the node is idle
#   ci/slurm/local-cluster.sh stop [STATE_DIR]  cancel the cluster's jobs, stop the daemons that `start`
#                                               started (by the pids in STATE_DIR; default: the one
#                                               named in /etc/slurm/slurm.conf) and remove the two
#                                               config files again
#
# By hand:  sudo ci/slurm/local-cluster.sh start /tmp/slurm-local
#           .venv/bin/snakemake --profile workflow/profiles/slurm --configfile workflow/config/smoke.yaml
#           sudo ci/slurm/local-cluster.sh stop /tmp/slurm-local
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MARKER="# reptile-tf local test cluster (ci/slurm)"
CONF_DIR=/etc/slurm
SBIN=/usr/sbin
export PATH="$PATH:/usr/sbin:/sbin"
# Client commands read /etc/slurm/slurm.conf (what we write); never another cluster's.
unset SLURM_CONF

die() { echo "local-cluster: ERROR: $*" >&2; exit 1; }
say() { echo "local-cluster: $*"; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (apt-get install, /etc/slurm, the daemons); got uid $(id -u)"
}

have_all() {
    local tool
    for tool in "$SBIN/munged" "$SBIN/slurmctld" "$SBIN/slurmd" munge unmunge sbatch squeue scontrol sinfo srun scancel; do
        command -v "$tool" > /dev/null 2>&1 || return 1
    done
}

install() {
    if have_all; then
        return 0
    fi
    need_root
    command -v apt-get > /dev/null || die "SLURM is not installed and there is no apt-get to install it (Debian/Ubuntu only): install slurm-wlm and munge"
    say "installing slurm-wlm and munge with apt-get"
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 install --no-install-recommends slurm-wlm munge)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}"; then
        say "apt-get install failed; running apt-get update and trying again"
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update \
            || die "apt-get update failed: cannot install slurm-wlm and munge"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" || die "apt-get install slurm-wlm munge failed"
    fi
    have_all || die "slurm-wlm and munge are installed but a command is still missing (need munged slurmctld slurmd munge unmunge sbatch squeue scontrol sinfo srun scancel)"
}

# The value of KEY in a slurm.conf.
conf_value() {
    sed -n "s/^$2=\\([^ ]*\\).*/\\1/p" "$1" | tail -n 1
}

# pid from FILE if that process is alive and is COMMAND.
live_pid() {
    local file=$1 command=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' < "$file")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$command" ] || return 1
    echo "$pid"
}

stop_pid() {
    local pid=$1 name=$2 i
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2> /dev/null || return 0
    for i in $(seq 1 100); do
        [ -d "/proc/$pid" ] || return 0
        sleep 0.2
    done
    say "$name (pid $pid) did not stop in 20 s; killing it"
    kill -KILL "$pid" 2> /dev/null || true
}

stop() {
    need_root
    local conf=$CONF_DIR/slurm.conf state=${1:-} pid
    if [ -z "$state" ]; then
        [ -f "$conf" ] && head -n 1 "$conf" | grep -qF "$MARKER" || { say "no local test cluster configured"; return 0; }
        state=$(dirname "$(conf_value "$conf" StateSaveLocation)")
    fi
    if pid=$(live_pid "$state/slurmctld.pid" slurmctld); then
        # Our cluster: cancel whatever still runs on it, so that no job step outlives slurmd.
        local jobs
        jobs=$(squeue -h -o %i 2> /dev/null || true)
        if [ -n "$jobs" ]; then
            say "cancelling jobs: $(echo $jobs)"
            scancel $jobs 2> /dev/null || true
            for _ in $(seq 1 60); do
                [ -z "$(squeue -h -t running,completing -o %i 2> /dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    if pid=$(live_pid "$state/slurmd.pid" slurmd); then stop_pid "$pid" slurmd; fi
    if pid=$(live_pid "$state/slurmctld.pid" slurmctld); then stop_pid "$pid" slurmctld; fi
    # munged only when `start` started it (it records the pid here only then).
    if pid=$(live_pid "$state/munged.pid" munged); then stop_pid "$pid" munged; fi
    local f
    for f in slurm.conf cgroup.conf; do
        if [ -f "$CONF_DIR/$f" ] && head -n 1 "$CONF_DIR/$f" | grep -qF "$MARKER"; then
            rm -f "$CONF_DIR/$f"
        fi
    done
    say "stopped"
}

start_munge() {
    local state=$1 pid
    if munge -n < /dev/null 2> /dev/null | unmunge > /dev/null 2>&1; then
        say "munged is already running; using it"
        return 0
    fi
    [ -s /etc/munge/munge.key ] || {
        say "creating /etc/munge/munge.key"
        if command -v mungekey > /dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2> /dev/null
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    }
    # What systemd's munge.service does: RuntimeDirectory=munge (0755), User=munge.
    install_dir /run/munge munge 0755
    say "starting munged"
    runuser -u munge -- "$SBIN/munged" || die "munged did not start"
    for _ in $(seq 1 50); do
        if pid=$(live_pid /run/munge/munged.pid munged); then
            echo "$pid" > "$state/munged.pid"
            break
        fi
        sleep 0.1
    done
    munge -n < /dev/null | unmunge > /dev/null || die "munged started but munge -n | unmunge fails"
}

install_dir() {
    mkdir -p "$1"
    chown "$2:$2" "$1"
    chmod "$3" "$1"
}

start() {
    local state=${1:?usage: $0 start STATE_DIR}
    need_root
    install
    mkdir -p "$state"
    state=$(cd "$state" && pwd)
    case "$state" in *" "*) die "STATE_DIR must not contain spaces: $state" ;; esac

    # A configuration that is not ours is never overwritten; a cluster of ours left running (an
    # interrupted test) is stopped first.
    local f
    for f in slurm.conf cgroup.conf; do
        if [ -f "$CONF_DIR/$f" ] && ! head -n 1 "$CONF_DIR/$f" | grep -qF "$MARKER"; then
            die "$CONF_DIR/$f exists and was not written by this script: refusing to replace a real SLURM configuration"
        fi
    done
    if [ -f "$CONF_DIR/slurm.conf" ]; then
        stop
    fi
    if scontrol ping > /dev/null 2>&1 || pgrep -x slurmctld > /dev/null || pgrep -x slurmd > /dev/null; then
        die "a slurmctld or slurmd not started by this script is running (pids: $(pgrep -x 'slurmctld|slurmd' | tr '\n' ' ')); stop it first"
    fi

    local mem_kib real_memory
    mem_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
    real_memory=$((mem_kib * 3 / 4 / 1024))
    mkdir -p "$state/slurmctld" "$state/slurmd" "$CONF_DIR"
    sed -e "s|@STATE_DIR@|$state|g" -e "s|@REAL_MEMORY@|$real_memory|g" "$HERE/slurm.conf" > "$CONF_DIR/slurm.conf"
    cp "$HERE/cgroup.conf" "$CONF_DIR/cgroup.conf"
    say "wrote $CONF_DIR/slurm.conf (state in $state, RealMemory=$real_memory MiB, CPUs=2)"

    start_munge "$state"
    say "starting slurmctld"
    "$SBIN/slurmctld" -i || die "slurmctld did not start; see $state/slurmctld.log"
    say "starting slurmd"
    "$SBIN/slurmd" -N localhost || die "slurmd did not start; see $state/slurmd.log"

    local node_state=""
    for _ in $(seq 1 120); do
        node_state=$(sinfo -h -N -n localhost -o %t 2> /dev/null || true)
        case "$node_state" in
            idle) say "node localhost is idle: cluster ready"; return 0 ;;
            drain* | down*) scontrol update nodename=localhost state=resume > /dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    echo "--- slurmctld.log" >&2; tail -n 30 "$state/slurmctld.log" >&2 || true
    echo "--- slurmd.log" >&2; tail -n 30 "$state/slurmd.log" >&2 || true
    die "node localhost did not become idle in 60 s (state: '${node_state:-unknown}')"
}

case "${1:-}" in
    install) install ;;
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 install | start STATE_DIR | stop [STATE_DIR]" >&2; exit 2 ;;
esac
