# chime tasks. `just --list` shows them. Integration tests and the lab need
# root, libvirtd and qemu: `just deps` installs and starts them. On a machine
# without just, `./run RECIPE` installs what is missing (just included), then
# runs `just RECIPE` (README.md, Prerequisites).

set shell := ["bash", "-euo", "pipefail", "-c"]

# Go is preinstalled at /usr/local/go on these machines.
export PATH := "/usr/local/go/bin:" + env_var("PATH")

# Where `lab-up` keeps the lab's state (lab.json, per-host libvirt dirs, logs).
lab_dir := ".lab"

# Show the recipes.
default:
    @just --list

# Build the chime binary into bin/, stamped with the git version.
build:
    go build -ldflags "-X github.com/chime-ha/chime/chime/structs.Version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)" -o bin/chime ./chime

# gofmt check, go vet, then every test (integration tests need root), the simulator's mutation check, the fuzzers.
test:
    @out="$(gofmt -l .)"; if [ -n "$out" ]; then echo "gofmt needed:"; echo "$out"; exit 1; fi
    go vet ./...
    go test -count=1 -timeout 80m ./...
    go test -count=1 -tags chime_mutation -run 'TestMutationStartBeforeSync|TestShrink' ./integration/sim
    just fuzz

# Every fuzz target for a short time each (docs/testing.md#fuzzing): 12 targets, about 2 minutes
# at the default (scripts/fuzz.sh, which also names them). The checked-in corpora
# (testdata/fuzz/FuzzX/) also run in every `go test`.
# A crasher is written to the package's testdata/fuzz/FuzzX/: fix it and commit it.
fuzz FUZZTIME="10s":
    scripts/fuzz.sh {{FUZZTIME}}

# gofmt, go vet and staticcheck (when installed).
lint:
    @out="$(gofmt -l .)"; if [ -n "$out" ]; then echo "gofmt needed:"; echo "$out"; exit 1; fi
    go vet ./...
    @if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed: skipped"; fi

# The deterministic simulator (docs/testing.md): the mutation check, then the scenarios, SEEDS
# random seeds and the summary table. One seed's whole trace: `just sim-seed 42`.
sim seeds="10000":
    go test -count=1 -tags chime_mutation -v -run 'TestMutationStartBeforeSync|TestShrink' ./integration/sim | grep -e 'mutation' -e '^ok' -e FAIL
    go test -count=1 -timeout 120m -v -run 'TestScenarios|TestSeeds|TestDeterminism' ./integration/sim -sim.seeds {{seeds}} | grep -v -e '^=== ' -e '^--- PASS' -e '^    --- PASS'

# Replay one random seed of the simulator with its whole trace.
sim-seed seed:
    go test -count=1 -v -run 'TestSeeds' ./integration/sim -sim.seed {{seed}} -sim.v

# Issue 14's six benchmarks (docs/benchmarks.md), each chime next to its reference in the same run:
# 1 restart vs virsh start, 2 migration vs virsh migrate, 3 leader failover vs etcd, 4 creates (in process, and vs etcd),
# 5 detection vs memberlist (and false positives under load), 6 scale. Matched by name in every
# package below, so a benchmark that is not there yet is simply not run.
bench14 := "^(BenchmarkRestartVsVirsh|BenchmarkMigrateVsVirsh|BenchmarkLeaderFailoverVsEtcd|BenchmarkCreates|BenchmarkCreatesVsEtcd|BenchmarkDetectionVsMemberlist|BenchmarkScale.*)$"
bench14_pkgs := "./chime/server ./integration/sim ./integration"

# One package at a time; the raw output is in OUT, the tables (integration/cmd/benchtable) in
# OUT.md. Needs root (the lab); CHIME_FLEET_PREFIX names the lab.
# Issue 14's six benchmarks, then their markdown tables for docs/benchmarks.md.
bench out=".bench/bench.out":
    mkdir -p "$(dirname {{out}})"
    CI=true CHIME_FLEET_PREFIX="${CHIME_FLEET_PREFIX:-chbnch}" go test -p 1 -count=1 -run '^$' -bench '{{bench14}}' -benchtime 1x -timeout 3h {{bench14_pkgs}} 2>&1 | tee {{out}}
    go run ./integration/cmd/benchtable {{out}} | tee "{{out}}.md"

# CHIME_BENCH_QUICK=1: fewer kills, detections and seconds per benchmark.
# `just bench` in its quick mode: all six within 10 minutes on 2 cores.
bench-quick out=".bench/bench-quick.out":
    CHIME_BENCH_QUICK=1 CHIME_BENCH_SECONDS="${CHIME_BENCH_SECONDS:-2}" CHIME_BENCH_PRESENT="${CHIME_BENCH_PRESENT:-0,10000}" just bench {{out}}

# The lab's BenchmarkAutoHA (root, about 15 minutes) runs only in `just bench-ha`.
# Every package's benchmarks but the integration ones (the simulator's BenchmarkHADeath included).
bench-micro:
    go test -run '^$' -bench . $(go list ./... | grep -v '/integration$')

# The simulator's RUNS seeded node deaths per timing and path, then the lab's LAB_RUNS power losses
# per set-up on real libvirt (needs root; CHIME_BENCH_HA_SEED_LEASE=1 adds the seed-timing lease
# path). docs/benchmarks.md has the figures.
# Automatic-HA figures: node death → every ha VM running elsewhere.
bench-ha runs="20" lab_runs="3":
    go test -count=1 -run '^$' -bench BenchmarkHADeath -benchtime 1x ./integration/sim -sim.ha.runs {{runs}} | grep -e HA-DEATH -e '^Benchmark' -e FAIL -e '^ok'
    CHIME_BENCH_HA_RUNS={{lab_runs}} go test -count=1 -run '^$' -bench BenchmarkAutoHA -benchtime 1x -timeout 2h ./integration | grep -e HA-LAB -e '^Benchmark' -e 'run [0-9]*:' -e FAIL -e '^ok'

# Issue 14, benchmarks 1 and 2 on real libvirt (root; a lab of 3 hosts per benchmark): kill -9 of a
# VM's qemu → running again vs `virsh start` / the API's create of an identical domain, and `chime vm
# migrate` vs `virsh migrate --live --p2p` with guest downtime, alternating, SAMPLES each (quick=1: 4).
# Prints one BENCH14 line per benchmark. docs/benchmarks.md has the figures.
bench-restart-migrate samples="12" quick="0":
    n={{samples}}; if [ "{{quick}}" = 1 ] || [ "${CHIME_BENCH_QUICK:-}" = 1 ]; then n=4; fi; \
    CI=true CHIME_FLEET_PREFIX="${CHIME_FLEET_PREFIX:-chimeb}" CHIME_BENCH_SAMPLES=$n \
        go test -count=1 -run '^$' -bench 'BenchmarkRestartVsVirsh|BenchmarkMigrateVsVirsh' -benchtime 1x -timeout 1h ./integration \
        | grep -e '^BENCH14 ' -e '^Benchmark' -e FAIL -e '^ok'

# Issue 14, benchmark 4 against etcd: VM creates through 3 `chime server` processes (mutual TLS,
# ACLs) vs puts through 3 etcd members' JSON gateway, one keep-alive load generator at 1, 16 and 64
# clients, windows alternating, with 0 and 10,000 VMs present (CHIME_BENCH_BIG=1: 100,000 too);
# prints `BENCH14 creates-etcd ...` lines (docs/benchmarks.md). quick=1: one 2 s window each, under
# a minute. CHIME_BENCH_CPUPROFILE=DIR: the servers' CPU profiles.
# Write throughput vs etcd puts (issue 14, benchmark 4).
bench-creates quick="0":
    CHIME_BENCH_QUICK={{ if quick == "1" { "1" } else { "0" } }} go test -count=1 -run '^$' -bench BenchmarkCreatesVsEtcd -benchtime 1x -timeout 1h ./integration | grep -e BENCH14 -e 'bench_creates_test' -e '^Benchmark' -e FAIL -e '^ok'

# One `chime server` process, simulated agents (15 s heartbeats) and VMs created through the API,
# an evacuation of 1,000 VMs and a list of every VM; prints a `BENCH14 scale ...` line
# (docs/benchmarks.md). quick=1: 1,000 agents and 10,000 VMs, under 2 minutes.
# Scale on one leader (issue 14, benchmark 6): 10,000 agents and 100,000 VMs.
bench-scale quick="0":
    CHIME_BENCH_QUICK={{ if quick == "1" { "1" } else { "0" } }} go test -count=1 -run '^$' -bench BenchmarkScale -benchtime 1x -timeout 1h ./chime/server/ | grep -e BENCH14 -e '^scale:' -e '^Benchmark' -e FAIL -e '^ok'

# Install the Debian packages and just, start the root libvirtd (as root).
deps:
    scripts/install-deps.sh
    scripts/libvirt-up.sh

# Build labctl into bin/.
labctl:
    go build -o bin/labctl ./integration/lab/cmd/labctl

# Lab of N hosts (netns + libvirtd each) + chime: 3 servers, an agent per host (.lab/chime/).
lab-up hosts="3": labctl build
    bin/labctl up --hosts {{hosts}} --dir {{lab_dir}} --chime bin/chime
    @echo "source {{lab_dir}}/chime/env   # CHIME_ADDR, CHIME_TLS_*, CHIME_TOKEN and PATH for the chime CLI"

# Stop the chime processes and remove the lab: VMs, daemons, namespaces, bridges.
lab-down: labctl
    bin/labctl down --dir {{lab_dir}}

# Show the lab's hosts and whether their libvirtd answers.
lab-status: labctl
    bin/labctl status --dir {{lab_dir}}

# Install, build, bring a lab up and run the demo against it.
demo: deps build lab-up
    scripts/demo.sh {{lab_dir}}
