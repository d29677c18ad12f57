# Sourced by scripts/serve and scripts/test: install what is missing, start what is down.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {  # apt_install COMMAND PACKAGE: install PACKAGE when COMMAND is missing
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 (for $1)"
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

ensure_python_env() {
  command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
  export UV_PYTHON_DOWNLOADS=never
  uv sync --frozen --quiet "$@"
}

ensure_redis() {
  apt_install redis-server redis-server
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

ensure_rabbitmq() {
  apt_install rabbitmq-server rabbitmq-server
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    rabbitmq-server -detached
  fi
  rabbitmqctl -q await_startup >/dev/null
}
