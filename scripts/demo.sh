#!/usr/bin/env bash
# demo.sh: a short tour of chime on the cluster that `just lab-up` started
# (3 servers, 3 hypervisor hosts with an agent each). It creates VMs, shows
# where they run (chime's view and each host's libvirt), kills a qemu and
# watches the agent restart it, then stops, starts and deletes a VM.
# Usage: scripts/demo.sh [LAB_DIR]   (run as root; `./run demo` does it all)
set -euo pipefail
cd "$(dirname "$0")/.."
lab_dir="${1:-.lab}"

if [ ! -f "$lab_dir/lab.json" ] || [ ! -f "$lab_dir/chime/env" ]; then
    echo "no lab with a chime cluster in $lab_dir: run './run lab-up' first" >&2
    exit 1
fi
# shellcheck disable=SC1091
source "$lab_dir/chime/env"      # CHIME_ADDR, CHIME_TLS_* (the lab's CA), CHIME_TOKEN (management), PATH with bin/
chime() { bin/chime "$@"; }

# No `cmd | grep -q` below: with pipefail, grep -q exiting early can fail
# the pipeline through SIGPIPE of the writer.

# Hosts in order, from lab.json (no jq on these machines).
mapfile -t host_names < <(grep -o '"name": *"[^"]*"' "$lab_dir/lab.json" | cut -d'"' -f4)
mapfile -t host_uris < <(grep -o '"libvirt_uri": *"[^"]*"' "$lab_dir/lab.json" | cut -d'"' -f4)
mapfile -t host_netns < <(grep -o '"netns": *"[^"]*"' "$lab_dir/lab.json" | cut -d'"' -f4)

bold=$'\e[1m'; dim=$'\e[2m'; off=$'\e[0m'
step() { echo; echo "${bold}== $*${off}"; }
show() { echo "${dim}\$ $*${off}" >&2; "$@"; }

# wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s.
wait_until() {
    local limit=$1 what=$2; shift 2
    local start=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS - start > limit )); then
            echo "timed out after ${limit}s waiting for: $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

# Counted from the table output: column MONITOR (4) of node list, STATE (3)
# of vm list.
nodes_normal() { [ "$(chime node list | awk 'NR > 1 && $4 == "normal"' | wc -l)" -eq "${#host_names[@]}" ]; }
vms_running() { [ "$(chime vm list | awk 'NR > 1 && $2 ~ /^demo-/ && $3 == "running"' | wc -l)" -eq "$1" ]; }
no_demo_vms() { [ "$(chime vm list | awk 'NR > 1 && $2 ~ /^demo-/' | wc -l)" -eq 0 ]; }
vm_id() { chime vm show "$1" -o json | grep -o '"id": *"[^"]*"' | head -1 | cut -d'"' -f4; }

# qemu_pid UUID: the pid of the qemu process running VM UUID, on any host.
qemu_pid() {
    local p
    for p in /proc/[0-9]*; do
        case "$(cat "$p/comm" 2>/dev/null)" in qemu-system*|qemu-kvm) ;; *) continue ;; esac
        if [[ "$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" == *"-uuid $1 "* ]]; then
            echo "${p#/proc/}"
            return 0
        fi
    done
    return 1
}
# host_of UUID: the host whose libvirt runs VM UUID.
host_of() {
    local i
    for i in "${!host_uris[@]}"; do
        if [[ $'\n'"$(virsh -c "${host_uris[$i]}" list --uuid)"$'\n' == *$'\n'"$1"$'\n'* ]]; then
            echo "$i"
            return 0
        fi
    done
    return 1
}
virsh_all() {
    local i
    for i in "${!host_uris[@]}"; do
        echo "${bold}-- ${host_names[$i]} (netns ${host_netns[$i]})${off}"
        virsh -c "${host_uris[$i]}" list --all
    done
}

step "The lab: three hypervisor hosts, each a network namespace with its own libvirtd"
show bin/labctl status --dir "$lab_dir"

step "The cluster: three servers (Raft) and one agent per host"
wait_until 60 "every node normal" nodes_normal
show chime operator raft list-peers
show chime node list

# A second run starts from scratch.
for i in 1 2 3 4; do chime vm delete "demo-$i" >/dev/null 2>&1 || true; done
wait_until 60 "earlier demo VMs deleted" no_demo_vms

step "Create four VMs (diskless, 64 MiB): the scheduler spreads them over the hosts"
for i in 1 2 3 4; do
    show chime vm create "demo-$i" --vcpus 1 --memory 64 | grep -E '^(Name|Node) '
done
wait_until 60 "4 VMs running" vms_running 4
show chime vm list

step "Where they run, asked of each host's own libvirtd"
virsh_all

step "kill -9 the qemu process of demo-1: its agent starts it again"
id1=$(vm_id demo-1)
pid=$(qemu_pid "$id1")
h=$(host_of "$id1")
echo "demo-1 ($id1) runs on ${host_names[$h]} as qemu pid $pid"
show kill -9 "$pid"
start=${EPOCHREALTIME/./}
new_pid() { local p; p=$(qemu_pid "$id1") && [ "$p" != "$pid" ]; }
wait_until 60 "demo-1 restarted" new_pid
us=$(( ${EPOCHREALTIME/./} - start ))
printf 'restarted as pid %s after %d.%03d s\n' "$(qemu_pid "$id1")" $((us / 1000000)) $((us / 1000 % 1000))
show virsh -c "${host_uris[$h]}" domstate --reason "$id1"

step "Stop demo-2 (graceful shutdown; the guest has no OS, so destroy after the grace period)"
id2=$(vm_id demo-2)
h2=$(host_of "$id2")
show chime vm stop demo-2
shut_off() { [[ "$(virsh -c "${host_uris[$h2]}" domstate "$id2")" == "shut off"* ]]; }
wait_until 60 "demo-2 shut off" shut_off
show virsh -c "${host_uris[$h2]}" domstate "$id2"

step "Start demo-2 again"
show chime vm start demo-2
running2() { [[ "$(virsh -c "${host_uris[$h2]}" domstate "$id2")" == running* ]]; }
wait_until 60 "demo-2 running" running2
show virsh -c "${host_uris[$h2]}" domstate "$id2"

step "Delete demo-3: its domain disappears from its host's libvirt"
id3=$(vm_id demo-3)
h3=$(host_of "$id3")
show chime vm delete demo-3
gone3() { local l; l=$(virsh -c "${host_uris[$h3]}" list --all --uuid) && [[ $'\n'"$l"$'\n' != *$'\n'"$id3"$'\n'* ]]; }
wait_until 60 "demo-3 undefined" gone3
show virsh -c "${host_uris[$h3]}" list --all

step "Final state"
show chime vm list
echo
echo "Play on: 'source $lab_dir/chime/env', then chime vm/node commands;"
echo "agent status on a host: bin/chime agent status --socket $lab_dir/chime/hv1/agent.sock"
echo "cut a host's management link: ip link set \$(grep -o '\"mgmt_veth\": *\"[^\"]*\"' $lab_dir/lab.json | head -1 | cut -d'\"' -f4) down"
echo "Tear everything down with: just lab-down"
