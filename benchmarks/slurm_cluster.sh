#!/usr/bin/env bash
# The workflow on a real SLURM cluster: a single-node cluster on this machine (Debian's slurm-wlm
# and munge; loopback addresses only), the smoke DAG (config/smoke.yaml layered on config.yaml)
# submitted by `snakemake --profile workflow/profiles/slurm` through snakemake-executor-plugin-slurm,
# the same configuration run locally, and their tidy evaluation tables compared.
#
#   bash benchmarks/slurm_cluster.sh       # as root, in the environment that runs the workflow
#
# Needs root (the daemons run as root) and the plugin (README "Scaling out"); installs slurm-wlm and
# munge with apt-get when slurmctld, slurmd, sbatch or munged is missing (CRD_SLURM_INSTALL=0: never).
# Prints the SLURM job ids (snakemake's submissions, each checked in the controller's job completion
# log), the comparison verdict and the time taken. Exit status: 0 every job went through sbatch and
# the tables are equal; 1 a failure; 77 no cluster could be started here (not root, no packages or
# plugin, a daemon or a test job that did not come up): tests/test_slurm_profile.py skips on 77.
# It stops everything it started (munged, slurmctld, slurmd, their jobs), also on failure, and
# removes its temporary folder unless KEEP=1.
#
# Accounting: none. The plugin's job status query defaults to sacct, which needs SLURM accounting
# storage (slurmdbd and a database); `--slurm-status-command squeue` makes it ask squeue, which
# lists finished jobs for MinJobAge seconds (3600 here; the plugin wants at least 3x its first
# status check delay). The jobs are recorded by JobCompType=jobcomp/filetxt, checked below.
# The configuration is /etc/slurm/slurm.conf, where a cluster has it (removed on exit; an existing
# one is left alone: exit 77): SLURM_CONF pointing elsewhere does not reach the jobs' `srun`, as
# snakemake-executor-plugin-slurm-jobstep 0.6.1 removes SLURM_* variables but a few from its env.
# Everything else (munge key and socket, state, spool, logs) is under a temporary folder.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
TIMEOUT_S=${CRD_SLURM_TIMEOUT:-1500}  # each snakemake run
T0=$(date +%s)

say() { printf 'slurm_cluster: %s\n' "$*"; }
skip() { printf 'slurm_cluster: cannot start a cluster here: %s\n' "$*" >&2; exit 77; }
fail() { printf 'slurm_cluster: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = "0" ] || skip "needs root (munged, slurmctld and slurmd run as root)"
"$PYTHON" -c 'import snakemake_executor_plugin_slurm' 2>/dev/null \
  || skip "snakemake-executor-plugin-slurm is not installed for $PYTHON (README \"Scaling out\")"
command -v snakemake >/dev/null || skip "no snakemake on PATH"

missing() {
  local b
  for b in slurmctld slurmd sbatch squeue scontrol munged munge; do
    command -v "$b" >/dev/null || return 0
  done
  return 1
}
if missing; then
  if [ "${CRD_SLURM_INSTALL:-1}" != "1" ] || ! command -v apt-get >/dev/null; then
    skip "slurmctld/slurmd/munged not installed (apt-get install slurm-wlm munge)"
  fi
  say "installing slurm-wlm and munge (apt-get)"
  # Debian's maintainer scripts would start the packaged daemons: policy-rc.d (exit 101) forbids it
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q --no-install-recommends slurm-wlm munge \
      || { apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; }; } \
    > /tmp/crd-slurm-apt.log 2>&1 || install_rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ -z "${install_rc:-}" ] || skip "apt-get install slurm-wlm munge failed (/tmp/crd-slurm-apt.log)"
  missing && skip "slurm-wlm/munge installed but a binary is still missing"
fi

CONF=/etc/slurm/slurm.conf
MARK="# written by crd-bench's benchmarks/slurm_cluster.sh, removed when it exits"
if [ -e "$CONF" ] && [ "$(head -n 1 "$CONF")" != "$MARK" ]; then
  skip "$CONF exists (a SLURM configured on this machine): not touching it"
fi
unset SLURM_CONF
WORK=$(mktemp -d "${TMPDIR:-/tmp}/crd-slurm.XXXXXX")
chmod 755 "$WORK"  # munged wants its socket's folder reachable by every user
mkdir -p "$WORK"/{munge,state,spool,log,run,tmp,slurm,local,profile}

MUNGED_PID="" CTLD_PID="" SLURMD_PID=""
stop_pid() {  # stop_pid PID: SIGTERM, up to 20 s, then SIGKILL
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
}
our_steps() {  # the PIDs of this cluster's slurmstepd processes: they hold its slurmd log open
  local p f
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$SLURMD_PID" ] && continue
    for f in "$p"/fd/*; do
      if [ "$(readlink "$f" 2>/dev/null)" = "$WORK/log/slurmd.log" ]; then
        echo "${p#/proc/}"
        break
      fi
    done
  done
}
cleanup() {
  local rc=$? pid
  set +e
  if [ -n "$CTLD_PID" ] && kill -0 "$CTLD_PID" 2>/dev/null; then
    # cancel what is left (a failed or interrupted run), wait for its job steps to end
    scancel --user=root --quiet 2>/dev/null
    for _ in $(seq 1 30); do
      [ -z "$(squeue -h -t RUNNING,PENDING,COMPLETING -o %i 2>/dev/null)" ] && [ -z "$(our_steps)" ] && break
      sleep 1
    done
  fi
  for pid in $(our_steps); do stop_pid "$pid"; done  # steps that outlived the wait
  stop_pid "$SLURMD_PID"
  for pid in $(our_steps); do stop_pid "$pid"; done
  stop_pid "$CTLD_PID"
  stop_pid "$MUNGED_PID"
  [ -e "$CONF" ] && [ "$(head -n 1 "$CONF")" = "$MARK" ] && cp "$CONF" "$WORK/slurm.conf" && rm -f "$CONF"
  if [ "${KEEP:-0}" = "1" ]; then
    say "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  say "stopped slurmd, slurmctld and munged, removed $CONF (exit status $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- munge: its own key, socket and logs under $WORK (an installed munged is left alone) -------
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$WORK/munge/munge.key"
SOCK="$WORK/munge/munge.sock"
munged --foreground --force --key-file="$WORK/munge/munge.key" --socket="$SOCK" \
  --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/log/munged.log" \
  --seed-file="$WORK/munge/munged.seed" >> "$WORK/log/munged.out" 2>&1 &
MUNGED_PID=$!
for _ in $(seq 1 20); do
  munge -n -S "$SOCK" 2>/dev/null | unmunge -S "$SOCK" >/dev/null 2>&1 && break
  kill -0 "$MUNGED_PID" 2>/dev/null || break
  sleep 0.5
done
munge -n -S "$SOCK" 2>/dev/null | unmunge -S "$SOCK" >/dev/null 2>&1 \
  || { tail -n 5 "$WORK/log/munged.log" "$WORK/log/munged.out" >&2; skip "munged did not come up"; }

# --- slurm.conf: one node, loopback only, no accounting database ---------------------------------
HOST=$(hostname -s)
# the node's name: this host's name when it resolves to a loopback address, else localhost
case "$(getent ahostsv4 "$HOST" 2>/dev/null | awk 'NR == 1 {print $1}')" in
  127.*) ;;
  *) HOST=localhost ;;
esac
# CPUs, sockets, cores, threads and RealMemory as slurmd measures them
NODE_HW=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
NCPU=$(printf '%s\n' "$NODE_HW" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
[ -n "$NCPU" ] || fail "slurmd -C gave no CPU count: $NODE_HW"
mkdir -p /etc/slurm
# the partition: the CPU one (no max_gpu) of the profile's partitions.yaml, which the plugin picks
PARTITION=$("$PYTHON" -c 'import sys, yaml
parts = yaml.safe_load(open(sys.argv[1]))["partitions"]
print(next(name for name, limits in parts.items() if not (limits or {}).get("max_gpu")))' \
  "$REPO/workflow/profiles/slurm/partitions.yaml") || fail "no CPU partition in workflow/profiles/slurm/partitions.yaml"
cat > "$CONF" <<EOF
$MARK
ClusterName=crdlocal
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
TmpFS=$WORK/tmp
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$WORK/log/jobcomp.txt
MinJobAge=3600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
InactiveLimit=0
KillWait=10
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_HW State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -i >> "$WORK/log/slurmctld.out" 2>&1 &
CTLD_PID=$!
slurmd -D -N "$HOST" >> "$WORK/log/slurmd.out" 2>&1 &
SLURMD_PID=$!
state=""
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  [ "$state" = "idle" ] && break
  sleep 1
done
if [ "$state" != "idle" ]; then
  tail -n 8 "$WORK/log/slurmctld.log" "$WORK/log/slurmd.log" "$WORK"/log/*.out >&2 2>/dev/null
  skip "the node did not become idle (sinfo: '${state}')"
fi
# a first job through sbatch and srun, as the plugin's job steps run (srun inside the allocation)
canary=$(sbatch --parsable --wait -o "$WORK/log/canary.out" --wrap 'srun -n1 true' 2>"$WORK/log/canary.err") \
  || { cat "$WORK/log/canary.err" "$WORK/log/canary.out" >&2 2>/dev/null; skip "a test job (sbatch + srun) failed"; }
say "cluster up: node $HOST ($NODE_HW), partition $PARTITION, test job $canary completed"

# --- the profile, for this node ---------------------------------------------------------------
# Layered on workflow/profiles/slurm (a later --profile replaces the earlier one's top-level keys):
# no conda (the jobs run in this environment) and `cores` = this node's CPUs. The smoke config asks
# for no GPU (resources.gpu 0), so the plugin sends every job to the profile's CPU partition.
printf 'use-conda: false\ncores: %s\n' "$NCPU" > "$WORK/profile/config.yaml"
say "profile overlay for this CPU node ($WORK/profile/config.yaml): $(tr '\n' ' ' < "$WORK/profile/config.yaml")"

CONFIG=(--configfile "$REPO/config.yaml" "$REPO/config/smoke.yaml")

# --- the DAG through SLURM --------------------------------------------------------------------
say "snakemake --profile workflow/profiles/slurm --profile <overlay> (smoke config) ..."
t=$(date +%s)
rc=0
(cd "$WORK/slurm" && timeout --foreground "$TIMEOUT_S" snakemake -s "$REPO/Snakefile" \
  --profile "$REPO/workflow/profiles/slurm" --profile "$WORK/profile" \
  "${CONFIG[@]}" --config "results=$WORK/slurm/results" "data_root=$WORK/slurm/data" \
  --slurm-status-command squeue --slurm-init-seconds-before-status-checks 5 \
  --slurm-keep-successful-logs) > "$WORK/slurm.log" 2>&1 || rc=$?
SLURM_S=$(( $(date +%s) - t ))
if [ "$rc" != "0" ]; then
  tail -n 40 "$WORK/slurm.log" >&2
  fail "the SLURM run exited $rc after ${SLURM_S} s"
fi
grep -E '[0-9]+ of [0-9]+ steps' "$WORK/slurm.log" | tail -n 1 | sed 's/^/    /'

# every job snakemake submitted: its SLURM id, and the controller's record of it
mapfile -t IDS < <(sed -n 's/.*submitted with SLURM jobid \([0-9]*\).*/\1/p' "$WORK/slurm.log")
[ "${#IDS[@]}" -gt 0 ] || fail "snakemake's log names no SLURM job id"
say "SLURM job ids of the DAG (${#IDS[@]} sbatch submissions): ${IDS[*]}"
completed=0
for id in "${IDS[@]}"; do
  grep -q "^JobId=$id .*JobState=COMPLETED" "$WORK/log/jobcomp.txt" && completed=$((completed + 1))
done
say "job completion log ($WORK/log/jobcomp.txt): $completed of ${#IDS[@]} COMPLETED"
[ "$completed" = "${#IDS[@]}" ] || fail "not every submitted job is COMPLETED in the job completion log"
say "squeue --states=all: $(squeue -h --states=all -o %i | wc -l) jobs known to slurmctld (MinJobAge 3600 s)"
for rule in train evaluate; do
  id=$(squeue -h --states=all -o '%i %k' | awk -v r="rule_${rule}_" 'index($2, r) == 1 {print $1; exit}')
  [ -n "$id" ] || continue
  say "rule $rule, as SLURM holds its job: $(scontrol show job -o "$id" | tr ' ' '\n' \
    | grep -E '^(JobId|Comment|Partition|TimeLimit|NumCPUs|MinMemoryNode|TRES)=' | tr '\n' ' ')"
done

# --- the same config, locally -----------------------------------------------------------------
say "snakemake --cores $NCPU (the same config, locally) ..."
t=$(date +%s)
rc=0
(cd "$WORK/local" && timeout --foreground "$TIMEOUT_S" snakemake -s "$REPO/Snakefile" --cores "$NCPU" \
  "${CONFIG[@]}" --config "results=$WORK/local/results" "data_root=$WORK/local/data") \
  > "$WORK/local.log" 2>&1 || rc=$?
LOCAL_S=$(( $(date +%s) - t ))
if [ "$rc" != "0" ]; then
  tail -n 40 "$WORK/local.log" >&2
  fail "the local run exited $rc after ${LOCAL_S} s"
fi

# --- equal results: every tidy table, all but the timing and memory rows ------------------------
verdict=0
"$PYTHON" - "$WORK/slurm/results" "$WORK/local/results" <<'EOF' || verdict=$?
import csv
import sys
from pathlib import Path

MEASURED = {"time_s", "peak_rss_mb", "cuda_alloc_peak_mb", "nvml_peak_mb"}  # differ run to run
a_root, b_root = Path(sys.argv[1]), Path(sys.argv[2])
a = sorted(p.relative_to(a_root) for p in a_root.glob("*/seed*/eval/*.csv"))
b = sorted(p.relative_to(b_root) for p in b_root.glob("*/seed*/eval/*.csv"))
if not a or a != b:
    print(f"slurm_cluster: DIFFERENT: the tables differ: SLURM {list(map(str, a))}, local {list(map(str, b))}")
    sys.exit(1)
rows = skipped = 0
different = []
for rel in a:
    with open(a_root / rel, newline="") as fa, open(b_root / rel, newline="") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    kept_a = [r for r in ra if r["metric"] not in MEASURED]
    kept_b = [r for r in rb if r["metric"] not in MEASURED]
    skipped += len(ra) - len(kept_a)
    rows += len(kept_a)
    if kept_a != kept_b:
        different.append(str(rel))
if different:
    print(f"slurm_cluster: DIFFERENT: {len(different)} of {len(a)} tables: {', '.join(different)}")
    sys.exit(1)
print(
    f"slurm_cluster: IDENTICAL: {len(a)} tidy tables ({rows} rows) equal to the local run's "
    f"(timing/memory rows left out: {skipped}; the bench table, all timings, not compared)"
)
EOF
say "time: SLURM run ${SLURM_S} s, local run ${LOCAL_S} s, whole script $(( $(date +%s) - T0 )) s"
[ "$verdict" = "0" ] || fail "the SLURM run's tables differ from the local run's"
