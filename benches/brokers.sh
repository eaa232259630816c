# Starting and stopping the brokers the compare scripts measure. Sourced, not run: the caller
# sets `work` (a temporary directory) and gets `broker_pid` and `port` back.

broker_pid=""
port=""

# With BROKER_CPUS set (a taskset list such as `0`), every broker is started on those CPUs only,
# and sees only them: Rosetta sizes its workers and RabbitMQ its schedulers by them.
on_broker_cpus=()
if [[ -n ${BROKER_CPUS:-} ]]; then on_broker_cpus=(taskset -c "$BROKER_CPUS"); fi

# Waits until something listens on 127.0.0.1:$1 (up to about two minutes).
wait_for_port() {
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# start_rosetta BINARY PROTOCOL [EXTRA_LIMITS]: only PROTOCOL's listener, on a free port read
# from the broker's log; no memory alarm, so nothing is refused while measuring. The WebSocket
# listeners stay closed: their fixed ports would make a second broker on the machine (another
# run, a test) fail to start.
start_rosetta() {
  local binary=$1 protocol=$2 extra=${3:-}
  rm -rf "$work/rosetta"; mkdir -p "$work/rosetta"
  {
    printf '[storage]\npath = "%s/rosetta/data"\n' "$work"
    for p in amqp mqtt stomp http; do
      if [[ $p == "$protocol" ]]; then printf '[%s]\nlisten = "127.0.0.1:0"\n' "$p"; else printf '[%s]\nenabled = false\n' "$p"; fi
      if [[ $p == "$protocol" && ( $p == mqtt || $p == stomp ) ]]; then printf 'ws_listen = false\n'; fi
    done
    printf '[limits]\nmemory_limit = 0\n%s\n' "$extra"
  } > "$work/rosetta/broker.toml"
  "${on_broker_cpus[@]}" "$binary" --config "$work/rosetta/broker.toml" > "$work/rosetta/log" 2>&1 &
  broker_pid=$!
  port=""
  for _ in $(seq 100); do
    port=$(grep -o "protocol=$protocol addr=127.0.0.1:[0-9]*" "$work/rosetta/log" 2>/dev/null | sed 's/.*://' || true)
    [[ -n $port ]] && return 0
    sleep 0.1
  done
  cat "$work/rosetta/log" >&2
  echo "rosetta did not open its $protocol listener" >&2
  exit 1
}

# start_rabbitmq NODE AMQP_PORT WAIT_PORT [PLUGIN] [CONF_LINE]: a fresh node with its own
# Mnesia directory; returns once WAIT_PORT accepts connections. With RABBITMQ_NOFILE set, the
# node may open that many files (the Debian package's default is 1024).
start_rabbitmq() {
  local node=$1 amqp_port=$2 wait_port=$3 plugin=${4:-} conf=${5:-}
  rm -rf "$work/rabbit"; mkdir -p "$work/rabbit"
  if [[ -n $plugin ]]; then echo "[$plugin]." > "$work/rabbit/enabled_plugins"; else echo "[]." > "$work/rabbit/enabled_plugins"; fi
  echo "$conf" > "$work/rabbit/rabbitmq.conf"
  # The Debian package's scripts run the node as the rabbitmq user.
  chmod 755 "$work"; chown -R rabbitmq:rabbitmq "$work/rabbit" 2>/dev/null || true
  export RABBITMQ_NODENAME=$node RABBITMQ_NODE_PORT=$amqp_port \
    RABBITMQ_MNESIA_BASE="$work/rabbit/mnesia" RABBITMQ_LOG_BASE="$work/rabbit/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$work/rabbit/enabled_plugins" RABBITMQ_PID_FILE="$work/rabbit/pid" \
    RABBITMQ_CONFIG_FILE="$work/rabbit/rabbitmq.conf"
  if [[ -n ${RABBITMQ_NOFILE:-} && -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    # Debian's wrapper starts the node through `su`, which puts the open-files limit back to
    # 1024 (each connection is one); raise it again as the rabbitmq user, up to the hard limit.
    "${on_broker_cpus[@]}" su rabbitmq -s /bin/sh -c "ulimit -n $RABBITMQ_NOFILE; exec /usr/lib/rabbitmq/bin/rabbitmq-server" \
      > "$work/rabbit/out" 2>&1 &
  else
    "${on_broker_cpus[@]}" rabbitmq-server > "$work/rabbit/out" 2>&1 &
  fi
  # Wait for the port rather than with rabbitmqctl, which needs the node's cookie.
  wait_for_port "$wait_port" || { cat "$work/rabbit/out" >&2; echo "RabbitMQ did not open port $wait_port" >&2; exit 1; }
  # The node writes its OS pid (the beam process, whose CPU and memory we sample) here.
  for _ in $(seq 100); do [[ -s $work/rabbit/pid ]] && break; sleep 0.1; done
  broker_pid=$(cat "$work/rabbit/pid")
  port=$wait_port
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_mosquitto: Mosquitto from the Debian package on a free port, anonymous clients allowed.
# Defaults otherwise: no persistence, max_inflight_messages 20, max_queued_messages 1000 (QoS 1
# messages past that for one client are dropped, and show up as lost).
start_mosquitto() {
  rm -rf "$work/mosquitto"; mkdir -p "$work/mosquitto"
  port=$(free_port)
  cat > "$work/mosquitto/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
log_dest stderr
CONF
  "${on_broker_cpus[@]}" mosquitto -c "$work/mosquitto/mosquitto.conf" > "$work/mosquitto/log" 2>&1 &
  broker_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  cat "$work/mosquitto/log" >&2; exit 1
}

stop_broker() {
  [[ -z $broker_pid ]] && return 0
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  while kill -0 "$broker_pid" 2>/dev/null; do sleep 0.2; done
  broker_pid=""
}
