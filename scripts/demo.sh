#!/usr/bin/env bash
# demo.sh walks through chime on the lab that `just lab-up` built. For now it
# shows the lab; the scenario (servers, agents, VMs, failover) comes with the
# chime binary.
set -euo pipefail
cd "$(dirname "$0")/.."
lab_dir="${1:-.lab}"

echo "== the lab (${lab_dir}/lab.json)"
bin/labctl status --dir "$lab_dir"
echo
echo "chime binary: $(ls -l bin/chime 2>/dev/null || echo 'not built yet')"
echo "Tear the lab down with: just lab-down"
