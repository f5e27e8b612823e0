#!/usr/bin/env bash
# Start a single-node Slurm (munge + slurmctld + slurmd) on this host, as root, for the tests
# and for trying `ftctl launch slurm --submit` locally. Needs Debian's slurm-wlm and munge.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
host=$(hostname -s)
cpus=$(nproc)
command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install slurm-wlm munge" >&2; exit 1; }
mkdir -p /etc/slurm /var/spool/slurmd /var/spool/slurmctld /var/log/slurm /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged" || /usr/sbin/munged --force
sed -e "s/@HOST@/$host/g" -e "s/@CPUS@/$cpus/g" "$here/slurm.conf" > /etc/slurm/slurm.conf
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|allocated'; then
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
        sinfo
        exit 0
    fi
    sleep 1
done
echo "Slurm did not come up; see /var/log/slurm/" >&2
sinfo || true
exit 1
