# Real servers for the collector's scale tier, started for one test run and stopped
# with it. Sourced by scripts/test-inner.sh; each function exports what the tests read.
#
#   start_postgres DIR   a private PostgreSQL cluster on a free loopback port
#                        -> CAPVAULT_TEST_POSTGRES_URL
#   start_garage DIR     a single-node Garage (S3-compatible) with one bucket and key
#                        -> CAPVAULT_TEST_S3_URL, AWS_ENDPOINT, AWS_* credentials
#   stop_services        stops whatever was started (also run from the EXIT trap)

SERVICE_PIDS=()
PG_CTL=
PG_DATA=
PG_AS=()

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # wait_for SECONDS WHAT COMMAND...
  local secs=$1 what=$2
  shift 2
  for _ in $(seq 1 $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  printf 'error: %s did not come up within %ss\n' "$what" "$secs" >&2
  return 1
}

start_postgres() {
  local root=$1 bin port
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x $bin/initdb ]] || { echo "error: PostgreSQL is not installed (apt-get install postgresql)" >&2; return 1; }
  # PostgreSQL refuses to run as root: as root, the cluster belongs to `postgres`.
  mkdir -p "$root"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$root"
    PG_AS=(runuser -u postgres --)
  fi
  PG_CTL=$bin/pg_ctl
  PG_DATA=$root/data
  port=$(free_port)
  "${PG_AS[@]}" "$bin/initdb" -D "$PG_DATA" -U capv --auth=trust -E UTF8 >"$root/initdb.log" 2>&1 ||
    { cat "$root/initdb.log" >&2; return 1; }
  "${PG_AS[@]}" "$PG_CTL" -D "$PG_DATA" -l "$root/server.log" -w -t 60 \
    -o "-p $port -k $root -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200" start >/dev/null ||
    { cat "$root/server.log" >&2; return 1; }
  "${PG_AS[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U capv capv
  export CAPVAULT_TEST_POSTGRES_URL="postgres://capv@127.0.0.1:$port/capv"
}

# Garage's version is pinned; scripts/test.sh installs it with cargo for `scale`.
GARAGE_VERSION=2.5.0

start_garage() {
  local root=$1 rpc s3 admin cfg node key_id secret
  command -v garage >/dev/null || { echo "error: garage is not installed (bash scripts/test.sh scale installs it)" >&2; return 1; }
  mkdir -p "$root/meta" "$root/data"
  rpc=$(free_port) s3=$(free_port) admin=$(free_port)
  cfg=$root/garage.toml
  cat >"$cfg" <<TOML
metadata_dir = "$root/meta"
data_dir = "$root/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
  garage -c "$cfg" server >"$root/server.log" 2>&1 &
  SERVICE_PIDS+=($!)
  wait_for 60 "garage" garage -c "$cfg" status || { cat "$root/server.log" >&2; return 1; }
  node=$(garage -c "$cfg" node id -q 2>/dev/null | cut -d@ -f1)
  garage -c "$cfg" layout assign -z dc1 -c 1G "$node" >/dev/null
  garage -c "$cfg" layout apply --version 1 >/dev/null
  garage -c "$cfg" bucket create capv >/dev/null
  key_id=GK$(python3 -c 'import secrets; print(secrets.token_hex(12))')
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  garage -c "$cfg" key import --yes -n capv "$key_id" "$secret" >/dev/null
  garage -c "$cfg" bucket allow --read --write --owner capv --key capv >/dev/null
  export CAPVAULT_TEST_S3_URL=s3://capv/tests
  export AWS_ENDPOINT=http://127.0.0.1:$s3 AWS_ALLOW_HTTP=true AWS_REGION=garage
  export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret
}

stop_services() {
  if [[ -n $PG_DATA && -d $PG_DATA ]]; then
    "${PG_AS[@]}" "$PG_CTL" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  local pid
  for pid in "${SERVICE_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
